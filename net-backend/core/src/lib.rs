//! airlock-netcore: airlock-net's gateway — Ethernet frames in, host
//! sockets out — with no knowledge of what carries the frames. It depends
//! on smoltcp and std (and Airlock's API types and logging), never on
//! virtqueues or vhost-user: a transport (the vhost-user device, a stream
//! socket, a test) hands it frames and drains what it queues.
//!
//! - [`gateway`]: [`Gateway`], the demultiplexer: ARP, IPv4, and dispatch
//!   to services and flows;
//! - `flows`: one module per flow kind (TCP, UDP, ping, published ports)
//!   and the flow table they share — crate-private;
//! - [`services`]: DHCP and DNS;
//! - [`phy`]: [`GuestTx`], the guest side of a transport, and [`Backlog`];
//! - [`shared`]: what outlives a guest connection (counters, published
//!   ports, policy, audit log) and how the control API asks a gateway about
//!   its guest;
//! - [`policy`], [`publish`], [`stats`], [`host`]: egress rules, published
//!   sockets, counters, host-side stream sockets.

pub mod config;
mod flows;
pub mod gateway;
pub mod host;
pub mod phy;
pub mod policy;
mod poller;
pub mod publish;
pub mod services;
pub mod shared;
pub mod stats;
mod wire;

pub use config::{GatewayConfig, PublishSource};
pub use flows::tcp::TcpLimits;
pub use gateway::Gateway;
pub use phy::{
    Backlog, FrameOffload, GuestSegmentation, GuestTx, Segmentation, TxPartial, TCP_CSUM_OFFSET,
};
pub use shared::{GuestView, PolicySource, Shared, SharedError};
pub use smoltcp::wire::EthernetAddress;
