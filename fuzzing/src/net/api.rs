//! `api`: bytes from a control-API client through
//! [`serve_connection`] (HTTP/1.1 framing, pipelining, `Expect`, limits)
//! into [`Api::handle`] (routing, the JSON bodies of expose/unexpose, port
//! and address validation), as the API's connection threads run them.
//!
//! The connection is an in-memory stream that hands out the input in reads
//! of a fuzzer-chosen size, then reports end-of-stream or "nothing more
//! yet" (a read timeout). Publishing is recorded, not bound: no host port
//! is ever opened; counters, flows, leases and DNS records come from a
//! real [`Shared`] (records only change its memory).
//!
//! Every response is checked: a status from 100 to 599, a JSON body, and
//! header values without line breaks.

use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use airlock_testkit::Input;

use super::{gateway_config, shared};
use airlock_api::{DnsInfo, FlowInfo, GvZone, Lease, PortSpec, Proto, Stats as Snapshot};
use airlock_net::api::http::{serve_connection, Request, Response, Transport};
use airlock_net::api::{Api, Control, GuestNet};
use airlock_netcore::publish::PublishError;
use airlock_netcore::services::dns::{DnsError, LocalRecord, RecordData};
use airlock_netcore::Shared;

/// The daemon's side of the API, with publishing recorded instead of bound
/// (ports below 1024 fail as a bind by an unprivileged daemon would).
struct Recorded {
    shared: Arc<Shared>,
    ports: Mutex<Vec<PortSpec>>,
}

impl Control for Recorded {
    fn publish(&self, spec: PortSpec) -> Result<(), PublishError> {
        let mut ports = self.ports.lock().unwrap_or_else(|e| e.into_inner());
        if ports
            .iter()
            .any(|p| p.host == spec.host && p.proto == spec.proto)
        {
            return Err(PublishError::Duplicate(format!(
                "{}/{}",
                spec.host, spec.proto
            )));
        }
        if spec.host.port() < 1024 {
            return Err(PublishError::Bind {
                addr: spec.host,
                proto: spec.proto,
                source: io::Error::from_raw_os_error(libc::EACCES),
            });
        }
        ports.push(spec);
        Ok(())
    }

    fn unpublish(&self, host: SocketAddr, proto: Proto) -> Result<PortSpec, PublishError> {
        let mut ports = self.ports.lock().unwrap_or_else(|e| e.into_inner());
        let i = ports
            .iter()
            .position(|p| p.host == host && p.proto == proto)
            .ok_or_else(|| PublishError::NotPublished(format!("{host}/{proto}")))?;
        Ok(ports.remove(i))
    }

    fn published(&self) -> Vec<PortSpec> {
        self.ports.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn stats(&self) -> Snapshot {
        self.shared.stats.snapshot()
    }

    fn dns_queries(&self) -> Vec<(&'static str, u64)> {
        self.shared.stats.dns_queries()
    }

    fn flows(&self) -> Option<Vec<FlowInfo>> {
        self.shared
            .current_guest(Duration::from_secs(1))
            .map(|g| g.flows)
    }

    fn leases(&self) -> Option<Vec<Lease>> {
        self.shared
            .current_guest(Duration::from_secs(1))
            .map(|g| g.leases)
    }

    fn dns(&self) -> DnsInfo {
        self.shared.dns.view().info()
    }

    fn dns_add(&self, name: &str, data: RecordData) -> Result<bool, DnsError> {
        self.shared.dns_add_record(name, data)
    }

    fn dns_remove(
        &self,
        name: &str,
        data: Option<&RecordData>,
    ) -> Result<Vec<LocalRecord>, DnsError> {
        self.shared.dns_remove_records(name, data)
    }

    fn dns_add_zone(
        &self,
        zone: &str,
        records: &[(String, IpAddr)],
        default: Option<IpAddr>,
    ) -> Result<String, DnsError> {
        self.shared.dns_add_gv_zone(zone, records, default)
    }

    fn dns_zones(&self) -> Vec<GvZone> {
        self.shared.dns.view().gv_zones()
    }
}

/// A client connection made of the fuzz input.
struct Client<'a> {
    input: &'a [u8],
    read_size: usize,
    eof: bool,
    output: Vec<u8>,
}

impl Read for Client<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.input.is_empty() {
            return if self.eof {
                Ok(0)
            } else {
                Err(io::ErrorKind::WouldBlock.into())
            };
        }
        let n = self.read_size.min(buf.len()).min(self.input.len());
        buf[..n].copy_from_slice(&self.input[..n]);
        self.input = &self.input[n..];
        Ok(n)
    }
}

impl Write for Client<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.output.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Transport for Client<'_> {
    fn set_read_timeout(&mut self, _timeout: Duration) -> io::Result<()> {
        Ok(())
    }
}

pub fn fuzz_api(data: &[u8]) {
    let mut input = Input::new(data);
    let read_size = match input.u8() {
        0 => 8192,
        n => usize::from(n),
    };
    let eof = input.bool();
    let api = Api::new(
        Arc::new(Recorded {
            shared: shared(),
            ports: Mutex::new(Vec::new()),
        }),
        GuestNet::new(&gateway_config(65_520)),
    );
    let mut client = Client {
        input: input.rest(),
        read_size,
        eof,
        output: Vec::new(),
    };
    // Errors are the client's stream failing; the mock's never does.
    let result = serve_connection(&mut client, |req: &Request| {
        let response = api.handle(req);
        check_response(req, &response);
        response
    });
    if let Err(e) = result {
        panic!("serving an in-memory connection failed: {e}");
    }
    assert!(
        client.output.is_empty() || client.output.starts_with(b"HTTP/1.1 "),
        "the connection's output is not HTTP/1.1"
    );
}

fn check_response(req: &Request, r: &Response) {
    assert!(
        (100..600).contains(&r.status),
        "{} {}: status {}",
        req.method,
        req.path,
        r.status
    );
    if let Err(e) = serde_json::from_slice::<serde_json::Value>(&r.body) {
        panic!("{} {}: body is not JSON ({e})", req.method, req.path);
    }
    for (name, value) in &r.headers {
        assert!(
            !value.contains(['\r', '\n']),
            "{} {}: header {name} carries a line break",
            req.method,
            req.path
        );
    }
    let bytes = r.to_bytes(false, true);
    assert!(bytes.starts_with(b"HTTP/1.1 "));
}
