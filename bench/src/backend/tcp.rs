//! Backend-only TCP through airlock-net: smoltcp runs in the harness as the
//! guest's TCP/IP stack (static 192.168.127.2/24, default route via
//! 192.168.127.1) over the harness' virtio-net driver, and moves one TCP
//! stream to or from a host server on 127.0.0.1 reached through
//! `host.airlock.internal`. The harness' own stack costs CPU on the same
//! machine, so this is the daemon's TCP path under a second userspace
//! stack, not the daemon alone.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use smoltcp::iface::{Config, Interface, SocketSet};
use smoltcp::phy::{self, Checksum, DeviceCapabilities, Medium};
use smoltcp::socket::tcp;
use smoltcp::time::Instant as SmolInstant;
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpAddress, IpCidr, Ipv4Address};

use airlock_testkit::frontend::frames::{GATEWAY_IP, GUEST_IP, GUEST_MAC, HOST_IP};
use airlock_testkit::frontend::netdev::{self, NetDev};

/// Errors of the TCP test.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The virtio-net driver failed.
    #[error(transparent)]
    Driver(#[from] netdev::Error),
    /// A host socket failed.
    #[error("host TCP {what}")]
    Host {
        /// What was being done.
        what: &'static str,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// smoltcp refused the connection setup.
    #[error("smoltcp: {0}")]
    Stack(String),
    /// The connection never carried data.
    #[error("the TCP connection did not get going within {0:?}")]
    Stalled(Duration),
}

fn host(what: &'static str) -> impl FnOnce(io::Error) -> Error {
    move |source| Error::Host { what, source }
}

/// Socket buffers of the harness' TCP socket.
const SOCKET_BUFFER: usize = 4 << 20;
/// Warm-up before counting (slow start, ARP).
const WARMUP: Duration = Duration::from_millis(500);
/// Host-side read/write size.
const CHUNK: usize = 256 << 10;

/// Which way the data flows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// The harness sends, a host sink reads.
    ToHost,
    /// A host source writes, the harness reads.
    ToGuest,
}

/// What a run moved.
pub struct Moved {
    /// Bytes counted over `elapsed`.
    pub bytes: u64,
    /// The measuring window.
    pub elapsed: Duration,
}

/// smoltcp's view of the [`NetDev`].
struct Phy<'a> {
    net: &'a mut NetDev,
    rx: VecDeque<Vec<u8>>,
    frame_mtu: usize,
}

struct RxTok(Vec<u8>);

impl phy::RxToken for RxTok {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

struct TxTok<'b> {
    net: &'b mut NetDev,
}

impl phy::TxToken for TxTok<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut frame = vec![0u8; len];
        let r = f(&mut frame);
        // No room cannot happen: `transmit` checked; a failure drops the
        // frame as a full NIC would, and TCP retransmits.
        let _ = self.net.send(&frame);
        r
    }
}

impl<'a> phy::Device for Phy<'a> {
    type RxToken<'b>
        = RxTok
    where
        Self: 'b;
    type TxToken<'b>
        = TxTok<'b>
    where
        Self: 'b;

    fn receive(&mut self, _: SmolInstant) -> Option<(RxTok, TxTok<'_>)> {
        let frame = self.rx.pop_front()?;
        Some((RxTok(frame), TxTok { net: self.net }))
    }

    fn transmit(&mut self, _: SmolInstant) -> Option<TxTok<'_>> {
        if self.net.tx_room() {
            Some(TxTok { net: self.net })
        } else {
            None
        }
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = self.frame_mtu;
        // Checksums are computed on send; received ones are not verified
        // (GUEST_CSUM: the device may leave them to us, as to Linux).
        caps.checksum.ipv4 = Checksum::Tx;
        caps.checksum.tcp = Checksum::Tx;
        caps.checksum.udp = Checksum::Tx;
        caps.checksum.icmpv4 = Checksum::Tx;
        caps
    }
}

/// A host TCP server: a sink counting what it reads, or a source writing
/// until stopped.
struct Server {
    port: u16,
    bytes: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    fn start(direction: Direction) -> Result<Server, Error> {
        let listener = TcpListener::bind("127.0.0.1:0").map_err(host("bind"))?;
        let port = listener.local_addr().map_err(host("address"))?.port();
        listener
            .set_nonblocking(true)
            .map_err(host("nonblocking"))?;
        let bytes = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (b, s) = (bytes.clone(), stop.clone());
        let thread = thread::spawn(move || {
            let stream = loop {
                if s.load(Ordering::Relaxed) {
                    return;
                }
                match listener.accept() {
                    Ok((stream, _)) => break stream,
                    Err(_) => thread::sleep(Duration::from_millis(5)),
                }
            };
            let _ = stream.set_nonblocking(false);
            let _ = stream.set_read_timeout(Some(Duration::from_millis(50)));
            let _ = stream.set_write_timeout(Some(Duration::from_millis(50)));
            serve(stream, direction, &b, &s);
        });
        Ok(Server {
            port,
            bytes,
            stop,
            thread: Some(thread),
        })
    }
}

fn serve(mut stream: TcpStream, direction: Direction, bytes: &AtomicU64, stop: &AtomicBool) {
    let mut buf = vec![0x5a_u8; CHUNK];
    while !stop.load(Ordering::Relaxed) {
        let result = match direction {
            Direction::ToHost => stream.read(&mut buf),
            Direction::ToGuest => stream.write(&buf),
        };
        match result {
            Ok(0) => return,
            Ok(n) => {
                bytes.fetch_add(n as u64, Ordering::Relaxed);
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) => {}
            Err(_) => return,
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Moves one TCP stream in `direction` for `duration` (after a warm-up)
/// with an IP MTU of `mtu`; `local_port` must differ between calls.
pub fn stream(
    net: &mut NetDev,
    direction: Direction,
    mtu: usize,
    duration: Duration,
    local_port: u16,
) -> Result<Moved, Error> {
    let server = Server::start(direction)?;
    let mut phy = Phy {
        net,
        rx: VecDeque::new(),
        frame_mtu: mtu + 14,
    };
    let mut iface = Interface::new(
        Config::new(HardwareAddress::Ethernet(EthernetAddress(GUEST_MAC))),
        &mut phy,
        SmolInstant::now(),
    );
    let [a, b, c, d] = GUEST_IP;
    iface.update_ip_addrs(|addrs| {
        let _ = addrs.push(IpCidr::new(IpAddress::v4(a, b, c, d), 24));
    });
    let [a, b, c, d] = GATEWAY_IP;
    iface
        .routes_mut()
        .add_default_ipv4_route(Ipv4Address::new(a, b, c, d))
        .map_err(|e| Error::Stack(e.to_string()))?;
    let socket = tcp::Socket::new(
        tcp::SocketBuffer::new(vec![0; SOCKET_BUFFER]),
        tcp::SocketBuffer::new(vec![0; SOCKET_BUFFER]),
    );
    let mut sockets = SocketSet::new(vec![]);
    let handle = sockets.add(socket);
    let [a, b, c, d] = HOST_IP;
    sockets
        .get_mut::<tcp::Socket>(handle)
        .connect(
            iface.context(),
            (IpAddress::v4(a, b, c, d), server.port),
            local_port,
        )
        .map_err(|e| Error::Stack(e.to_string()))?;
    let data = vec![0x5a_u8; CHUNK];
    let start = Instant::now();
    let mut received = 0u64;
    let mut marks: Option<(Instant, u64)> = None;
    let mut frames = Vec::new();
    loop {
        let now = Instant::now();
        let counted = match direction {
            Direction::ToHost => server.bytes.load(Ordering::Relaxed),
            Direction::ToGuest => received,
        };
        if marks.is_none() && now >= start + WARMUP {
            if counted == 0 {
                if now >= start + Duration::from_secs(5) {
                    return Err(Error::Stalled(Duration::from_secs(5)));
                }
            } else {
                marks = Some((now, counted));
            }
        }
        if let Some((t0, c0)) = marks {
            if now >= t0 + duration {
                return Ok(Moved {
                    bytes: counted - c0,
                    elapsed: now - t0,
                });
            }
        }
        phy.net.reap_tx()?;
        frames.clear();
        phy.net.recv_frames(&mut frames)?;
        phy.rx.extend(frames.drain(..));
        iface.poll(SmolInstant::now(), &mut phy, &mut sockets);
        let socket = sockets.get_mut::<tcp::Socket>(handle);
        match direction {
            Direction::ToHost => {
                while socket.can_send() {
                    match socket.send_slice(&data) {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {}
                    }
                }
            }
            Direction::ToGuest => {
                while socket.can_recv() {
                    match socket.recv(|buf| (buf.len(), buf.len())) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => received += n as u64,
                    }
                }
            }
        }
        iface.poll(SmolInstant::now(), &mut phy, &mut sockets);
        phy.net.flush()?;
        let delay = iface
            .poll_delay(SmolInstant::now(), &sockets)
            .map_or(Duration::from_millis(10), |d| {
                Duration::from_micros(d.total_micros())
            })
            .min(Duration::from_millis(10));
        if phy.rx.is_empty() {
            phy.net.wait(delay)?;
        }
    }
}
