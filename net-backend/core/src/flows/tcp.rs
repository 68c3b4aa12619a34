//! TCP NAT: one guest connection ⇄ one host connection.
//!
//! Each flow owns a smoltcp `SocketSet` with exactly one socket, so a
//! segment from the guest is dispatched through the gateway's 4-tuple map
//! to its flow in O(1), instead of smoltcp scanning every socket.
//!
//! Life of a flow:
//! 1. The guest's SYN creates the flow: a smoltcp socket listening on the
//!    exact destination with the SYN-ACK paused, and a non-blocking host
//!    `connect()`.
//! 2. The host connect succeeds → the SYN-ACK goes out; it fails (or times
//!    out) → the guest gets a RST, as from a real refusing server.
//! 3. Data is spliced both ways without unbounded buffering: bytes leave
//!    smoltcp's receive buffer only as fast as the host socket takes them
//!    (a slow host shrinks the guest's window), and host reads only fill
//!    the free space of smoltcp's send buffer.
//! 4. FIN from either side is passed on as a half-close; a RST or socket
//!    error on either side resets the other.

use std::any::Any;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::os::unix::io::AsRawFd;
use std::time::{Duration, Instant};

use airlock_api::{Direction, FlowInfo, Proto};
use smoltcp::iface::{SocketHandle, SocketSet};
use smoltcp::socket::tcp::{self, State};
use smoltcp::wire::{IpEndpoint, IpListenEndpoint, TcpPacket};
use vmm_sys_util::epoll::EventSet;

use super::{age_ms, Cx, End, Flow, FlowKey, GuestPacket, Verdict};
use crate::host::{self, HostStream, Target};
use crate::phy::IpDevice;
use crate::poller::{FlowId, Poller, Source};
use crate::services::dns::bridge::DnsBridge;

/// Sizes and timeouts of TCP flows.
#[derive(Clone, Copy, Debug)]
pub struct TcpLimits {
    /// smoltcp buffer per direction; also caps the advertised window.
    pub buffer: usize,
    pub connect_timeout: Duration,
}

pub(crate) struct TcpFlow {
    /// The guest's endpoint.
    pub guest: SocketAddr,
    /// The other end as the guest sees it.
    pub remote: SocketAddr,
    /// The host side: where an outbound flow connects, or the client of an
    /// inbound one.
    pub target: Target,
    pub direction: Direction,
    sockets: SocketSet<'static>,
    handle: SocketHandle,
    host: Option<HostStream>,
    /// Set instead of `host` for DNS over TCP to the gateway.
    dns: Option<DnsBridge>,
    connecting: bool,
    connect_deadline: Option<Instant>,
    /// The host sent FIN (read returned 0).
    host_eof: bool,
    /// We passed the guest's FIN on with shutdown(SHUT_WR).
    host_shut_wr: bool,
    /// We asked smoltcp to send FIN after the pending data.
    fin_queued: bool,
    interest: Option<EventSet>,
    /// When the flow next needs polling (smoltcp's timers, the connect
    /// timeout).
    deadline: Option<Instant>,
    /// The MSS the guest announced in its SYN (or SYN-ACK): segments to it
    /// larger than this go out marked for the guest to cut, when it takes
    /// them (segmentation offload).
    guest_mss: u16,
    pub bytes_to_host: u64,
    pub bytes_to_guest: u64,
    pub opened: Instant,
    end: Option<End>,
}

/// The MSS TCP assumes when a SYN carries none (RFC 9293), and the least
/// smoltcp takes from one.
const DEFAULT_MSS: u16 = 536;
const MIN_MSS: u16 = 48;

/// The MSS option of a SYN (or SYN-ACK) segment, as smoltcp takes it.
fn syn_mss(segment: &[u8]) -> Option<u16> {
    let tcp = TcpPacket::new_checked(segment).ok()?;
    if !tcp.syn() {
        return None;
    }
    let mss = tcp.options_summary().ok()?.max_segment_size?;
    Some(mss.max(MIN_MSS))
}

fn would_block(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::Interrupted
}

impl TcpFlow {
    /// The smoltcp socket for a guest SYN to `remote`: listening on that
    /// exact endpoint, optionally holding its SYN-ACK back.
    fn listening_socket(
        remote: SocketAddr,
        limits: TcpLimits,
        hold_synack: bool,
    ) -> io::Result<(SocketSet<'static>, SocketHandle)> {
        let rx = tcp::SocketBuffer::new(vec![0u8; limits.buffer]);
        let tx = tcp::SocketBuffer::new(vec![0u8; limits.buffer]);
        let mut socket = tcp::Socket::new(rx, tx);
        socket.pause_synack(hold_synack);
        // The guest's own stack coalesces; don't delay our segments too.
        socket.set_nagle_enabled(false);
        socket
            .listen(IpListenEndpoint {
                addr: Some(remote.ip().into()),
                port: remote.port(),
            })
            .map_err(|e| io::Error::other(format!("cannot listen on {remote}: {e}")))?;
        let mut sockets = SocketSet::new(Vec::with_capacity(1));
        let handle = sockets.add(socket);
        Ok((sockets, handle))
    }

    fn with_parts(
        guest: SocketAddr,
        remote: SocketAddr,
        target: Target,
        (sockets, handle): (SocketSet<'static>, SocketHandle),
        now: Instant,
    ) -> TcpFlow {
        TcpFlow {
            guest,
            remote,
            target,
            sockets,
            handle,
            direction: Direction::Outbound,
            host: None,
            dns: None,
            connecting: false,
            connect_deadline: None,
            host_eof: false,
            host_shut_wr: false,
            fin_queued: false,
            interest: None,
            deadline: None,
            guest_mss: DEFAULT_MSS,
            bytes_to_host: 0,
            bytes_to_guest: 0,
            opened: now,
            end: None,
        }
    }

    /// Creates the flow for a guest SYN from `guest` to `remote`, connecting
    /// the host side to `target`. The caller then feeds the SYN with
    /// [`TcpFlow::ingress`].
    pub(crate) fn open(
        id: FlowId,
        guest: SocketAddr,
        remote: SocketAddr,
        target: Target,
        limits: TcpLimits,
        cx: &mut Cx,
    ) -> io::Result<TcpFlow> {
        let stream = host::connect(&target)?;
        let parts = Self::listening_socket(remote, limits, true)?;
        let events = EventSet::OUT;
        cx.stack
            .poller
            .add(stream.as_raw_fd(), events, id, Source::Host)?;
        let mut flow = Self::with_parts(guest, remote, target, parts, cx.now);
        flow.host = Some(stream);
        flow.connecting = true;
        flow.connect_deadline = Some(cx.now + limits.connect_timeout);
        flow.interest = Some(events);
        Ok(flow)
    }

    /// Creates the flow for a guest's DNS-over-TCP connection to the gateway.
    pub(crate) fn open_dns(
        guest: SocketAddr,
        remote: SocketAddr,
        bridge: DnsBridge,
        limits: TcpLimits,
        now: Instant,
    ) -> io::Result<TcpFlow> {
        let parts = Self::listening_socket(remote, limits, false)?;
        let mut flow = Self::with_parts(guest, remote, Target::Tcp(remote), parts, now);
        flow.dns = Some(bridge);
        Ok(flow)
    }

    /// Creates the flow for a host client accepted on a published port:
    /// `stream` is connected; the guest side is opened from `local` (the
    /// address the guest will see) to `guest`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn open_inbound(
        id: FlowId,
        stream: std::net::TcpStream,
        client: std::net::SocketAddr,
        guest: SocketAddr,
        local: SocketAddr,
        limits: TcpLimits,
        cx: &mut Cx,
    ) -> io::Result<TcpFlow> {
        stream.set_nonblocking(true)?;
        stream.set_nodelay(true)?;
        let rx = tcp::SocketBuffer::new(vec![0u8; limits.buffer]);
        let tx = tcp::SocketBuffer::new(vec![0u8; limits.buffer]);
        let mut socket = tcp::Socket::new(rx, tx);
        socket.set_nagle_enabled(false);
        socket
            .connect(
                cx.stack.iface.context(),
                IpEndpoint::new(guest.ip().into(), guest.port()),
                IpListenEndpoint {
                    addr: Some(local.ip().into()),
                    port: local.port(),
                },
            )
            .map_err(|e| io::Error::other(format!("cannot connect to {guest}: {e}")))?;
        let mut sockets = SocketSet::new(Vec::with_capacity(1));
        let handle = sockets.add(socket);
        let host = HostStream::Tcp(stream);
        cx.stack
            .poller
            .add(host.as_raw_fd(), EventSet::empty(), id, Source::Host)?;
        let mut flow =
            Self::with_parts(guest, local, Target::Tcp(client), (sockets, handle), cx.now);
        flow.direction = Direction::Inbound;
        flow.host = Some(host);
        flow.interest = Some(EventSet::empty());
        // The guest must answer the SYN within the connect timeout, or the
        // client is reset rather than left hanging.
        flow.connect_deadline = Some(cx.now + limits.connect_timeout);
        Ok(flow)
    }

    fn socket(&mut self) -> &mut tcp::Socket<'static> {
        self.sockets.get_mut::<tcp::Socket>(self.handle)
    }

    pub(crate) fn state(&self) -> State {
        self.sockets.get::<tcp::Socket>(self.handle).state()
    }

    fn poll(&mut self, cx: &mut Cx, packet: Option<&[u8]>) {
        let now = cx.smol_now();
        let link = cx.stack.link;
        let mut dev = IpDevice::new(&mut *cx.tx, link.gateway_mac, link.guest_mac, link.mtu)
            .with_mss(self.guest_mss);
        if let Some(p) = packet {
            dev = dev.with_packet(p);
        }
        cx.stack.iface.poll(now, &mut dev, &mut self.sockets);
    }

    fn finish_connect(&mut self, cx: &mut Cx) {
        let outcome = match &self.host {
            Some(h) => h.take_error(),
            None => return,
        };
        match outcome {
            Ok(None) => {
                self.connecting = false;
                self.connect_deadline = None;
                self.socket().pause_synack(false);
                self.poll(cx, None);
            }
            Ok(Some(e)) | Err(e) => {
                log::debug!(
                    "tcp {} -> {} ({}): connect failed: {e}",
                    self.guest,
                    self.remote,
                    self.target
                );
                self.fail(End::Refused, cx);
            }
        }
    }

    /// Drops the host side with a RST (and a DNS flow's upstream) and
    /// aborts the guest side's socket.
    fn abort(&mut self, poller: &Poller) {
        if let Some(host) = self.host.take() {
            poller.remove(host.as_raw_fd());
            host.set_reset_on_close();
        }
        if let Some(b) = self.dns.as_mut() {
            b.close(poller);
        }
        self.socket().abort();
    }

    /// Resets both sides: the guest gets a RST now.
    fn fail(&mut self, why: End, cx: &mut Cx) {
        self.abort(&cx.stack.poller);
        self.poll(cx, None);
        self.end = Some(why);
    }

    /// Moves data both ways until neither side can take more, and passes
    /// half-closes on.
    fn pump(&mut self, id: FlowId, cx: &mut Cx) {
        if self.connecting || self.end.is_some() {
            return;
        }
        if self.dns.is_some() {
            self.pump_dns(id, cx);
            return;
        }
        loop {
            let mut progress = false;
            // Guest → host.
            if !self.host_shut_wr {
                let Some(host) = self.host.as_mut() else {
                    break;
                };
                let socket = self.sockets.get_mut::<tcp::Socket>(self.handle);
                if socket.can_recv() {
                    let res = socket.recv(|buf| match host.write(buf) {
                        Ok(n) => (n, Ok(n)),
                        Err(e) if would_block(&e) => (0, Ok(0)),
                        Err(e) => (0, Err(e)),
                    });
                    match res {
                        Ok(Ok(n)) if n > 0 => {
                            self.bytes_to_host += n as u64;
                            progress = true;
                        }
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => {
                            log::debug!("tcp {} -> {}: host write: {e}", self.guest, self.remote);
                            self.fail(End::Reset, cx);
                            return;
                        }
                        Err(_) => {}
                    }
                }
            }
            // Host → guest.
            if !self.host_eof {
                let Some(host) = self.host.as_mut() else {
                    break;
                };
                let socket = self.sockets.get_mut::<tcp::Socket>(self.handle);
                if socket.can_send() {
                    let res = socket.send(|buf| match host.read(buf) {
                        Ok(0) if !buf.is_empty() => (0, Ok(None)),
                        Ok(n) => (n, Ok(Some(n))),
                        Err(e) if would_block(&e) => (0, Ok(Some(0))),
                        Err(e) => (0, Err(e)),
                    });
                    match res {
                        Ok(Ok(Some(n))) if n > 0 => {
                            self.bytes_to_guest += n as u64;
                            progress = true;
                        }
                        Ok(Ok(Some(_))) => {}
                        Ok(Ok(None)) => {
                            self.host_eof = true;
                            progress = true;
                        }
                        Ok(Err(e)) => {
                            log::debug!("tcp {} -> {}: host read: {e}", self.guest, self.remote);
                            self.fail(End::Reset, cx);
                            return;
                        }
                        Err(_) => {}
                    }
                }
            }
            if progress {
                // Send what was queued and open the window before trying again.
                self.poll(cx, None);
            } else {
                break;
            }
        }
        // Host FIN → guest FIN, once everything before it is queued.
        if self.host_eof && !self.fin_queued {
            self.fin_queued = true;
            self.socket().close();
            self.poll(cx, None);
        }
        // Guest FIN → host half-close, once its data reached the host.
        let guest_fin = matches!(
            self.state(),
            State::CloseWait | State::LastAck | State::Closing | State::TimeWait
        );
        if guest_fin
            && !self.host_shut_wr
            && self.sockets.get::<tcp::Socket>(self.handle).recv_queue() == 0
        {
            self.host_shut_wr = true;
            if let Some(h) = &self.host {
                let _ = h.shutdown_write();
            }
        }
    }

    /// DNS over TCP: guest bytes into the bridge, answers back to the guest,
    /// and the guest's FIN answered once everything it asked is answered.
    fn pump_dns(&mut self, id: FlowId, cx: &mut Cx) {
        loop {
            let mut progress = false;
            let Some(bridge) = self.dns.as_mut() else {
                return;
            };
            let socket = self.sockets.get_mut::<tcp::Socket>(self.handle);
            if bridge.wants_guest_bytes() && socket.can_recv() {
                let dns = &cx.stack.shared.dns;
                match socket
                    .recv(|buf| (buf.len(), bridge.guest_bytes(buf, dns).map(|()| buf.len())))
                {
                    Ok(Ok(n)) => {
                        self.bytes_to_host += n as u64;
                        progress |= n > 0;
                    }
                    Ok(Err(e)) => {
                        log::debug!("dns/tcp {}: {e}", self.guest);
                        self.fail(End::Reset, cx);
                        return;
                    }
                    Err(_) => {}
                }
            }
            progress |= bridge.drive(id, &cx.stack.poller, &cx.stack.shared.dns);
            if !bridge.to_guest.is_empty() && socket.can_send() {
                if let Ok(n) = socket.send_slice(&bridge.to_guest) {
                    bridge.to_guest.drain(..n);
                    self.bytes_to_guest += n as u64;
                    progress |= n > 0;
                }
            }
            if progress {
                self.poll(cx, None);
            } else {
                break;
            }
        }
        let guest_fin = matches!(self.state(), State::CloseWait);
        if guest_fin && !self.fin_queued && self.dns.as_ref().is_some_and(|b| b.idle()) {
            self.fin_queued = true;
            self.socket().close();
            self.poll(cx, None);
        }
    }

    /// Updates epoll interest and the deadline; detects the end of the flow.
    fn settle(&mut self, id: FlowId, cx: &mut Cx) {
        if self.end.is_none() {
            match self.state() {
                State::Closed => {
                    // The guest reset us (or the connection timed out) unless
                    // both FINs were exchanged.
                    let graceful = (self.host_eof && self.host_shut_wr)
                        || (self.dns.is_some() && self.fin_queued);
                    if !graceful {
                        if let Some(h) = &self.host {
                            h.set_reset_on_close();
                        }
                    }
                    self.end = Some(if graceful { End::Closed } else { End::Reset });
                }
                State::TimeWait
                    if (self.host_eof && self.host_shut_wr)
                        || (self.dns.is_some() && self.fin_queued) =>
                {
                    self.end = Some(End::Closed);
                }
                _ => {}
            }
        }
        if self.end.is_some() {
            if let Some(host) = self.host.take() {
                cx.stack.poller.remove(host.as_raw_fd());
            }
            if let Some(b) = self.dns.as_mut() {
                b.close(&cx.stack.poller);
            }
            self.deadline = None;
            return;
        }
        if !self.connecting {
            if let Some(host) = &self.host {
                let socket = self.sockets.get::<tcp::Socket>(self.handle);
                let mut want = EventSet::empty();
                if !self.host_eof
                    && socket.may_send()
                    && socket.send_queue() < socket.send_capacity()
                {
                    want |= EventSet::IN;
                }
                if !self.host_shut_wr && socket.recv_queue() > 0 {
                    want |= EventSet::OUT;
                }
                if self.interest != Some(want) {
                    if let Err(e) = cx
                        .stack
                        .poller
                        .modify(host.as_raw_fd(), want, id, Source::Host)
                    {
                        log::warn!("tcp {} -> {}: epoll: {e}", self.guest, self.remote);
                    }
                    self.interest = Some(want);
                }
            }
        }
        if self.direction == Direction::Inbound && self.state() != State::SynSent {
            self.connect_deadline = None;
        }
        let smol_now = cx.smol_now();
        let mut smol = cx
            .stack
            .iface
            .poll_at(smol_now, &self.sockets)
            .map(|t| cx.std_instant(t));
        if smol.is_some_and(|t| t <= cx.now) {
            // smoltcp wants to send right now. With room for frames that
            // is done here; without room a timer "now" would fire again and
            // again (a busy loop for as long as the guest posts no buffers):
            // the gateway polls starved flows when the guest makes room.
            if cx.tx.has_room() {
                self.poll(cx, None);
                let smol_now = cx.smol_now();
                smol = cx
                    .stack
                    .iface
                    .poll_at(smol_now, &self.sockets)
                    .map(|t| cx.std_instant(t))
                    .filter(|t| *t > cx.now);
            } else {
                smol = None;
            }
        }
        self.deadline = match (smol, self.connect_deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }

    fn verdict(&self) -> Verdict {
        if self.end.is_some() {
            Verdict::Done
        } else {
            Verdict::Keep
        }
    }
}

impl Flow for TcpFlow {
    fn keys(&self) -> Vec<FlowKey> {
        vec![FlowKey::Tcp(self.guest, self.remote)]
    }

    fn info(&self, now: Instant) -> FlowInfo {
        FlowInfo {
            proto: Proto::Tcp,
            direction: self.direction,
            guest: self.guest.to_string(),
            remote: self.remote.to_string(),
            host_side: self.target.to_string(),
            bytes_to_host: self.bytes_to_host,
            bytes_to_guest: self.bytes_to_guest,
            age_ms: age_ms(self.opened, now),
            service: self.dns.is_some(),
        }
    }

    /// A segment from the guest (its checksum already checked).
    fn guest_packet(&mut self, id: FlowId, packet: &GuestPacket, cx: &mut Cx) -> Verdict {
        if let Some(mss) = syn_mss(packet.payload) {
            self.guest_mss = mss;
        }
        self.poll(cx, Some(packet.ip));
        self.pump(id, cx);
        self.settle(id, cx);
        self.verdict()
    }

    fn host_event(
        &mut self,
        id: FlowId,
        _source: Source,
        events: EventSet,
        cx: &mut Cx,
    ) -> Verdict {
        if self.connecting && self.dns.is_none() {
            if events.intersects(EventSet::OUT | EventSet::ERROR | EventSet::HANG_UP) {
                self.finish_connect(cx);
            }
        } else {
            self.pump(id, cx);
        }
        self.settle(id, cx);
        self.verdict()
    }

    fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// smoltcp's timers, or the connect timeout.
    fn timer(&mut self, id: FlowId, cx: &mut Cx) -> Verdict {
        let overdue = self.connect_deadline.is_some_and(|d| cx.now >= d);
        let waiting = self.connecting
            || (self.direction == Direction::Inbound && self.state() == State::SynSent);
        if overdue && waiting {
            self.fail(End::TimedOut, cx);
        } else {
            self.poll(cx, None);
            self.pump(id, cx);
        }
        self.settle(id, cx);
        self.verdict()
    }

    fn guest_room(&mut self, id: FlowId, cx: &mut Cx) -> Verdict {
        self.pump(id, cx);
        self.settle(id, cx);
        self.verdict()
    }

    fn egress(&self) -> Option<(Proto, SocketAddr)> {
        (self.direction == Direction::Outbound && self.dns.is_none())
            .then_some((Proto::Tcp, self.remote))
    }

    fn reset(&mut self, cx: &mut Cx) {
        self.fail(End::Reset, cx);
    }

    /// Closes both sides at once (the guest is gone): the host peer gets a
    /// RST.
    fn shutdown(&mut self, cx: &mut Cx) {
        self.abort(&cx.stack.poller);
        self.end.get_or_insert(End::Reset);
    }

    fn close(&mut self, poller: &Poller) {
        if let Some(host) = self.host.take() {
            poller.remove(host.as_raw_fd());
        }
        if let Some(b) = self.dns.as_mut() {
            b.close(poller);
        }
    }

    fn end(&self) -> End {
        self.end.unwrap_or(End::Expired)
    }

    fn service(&self) -> bool {
        self.dns.is_some()
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}
