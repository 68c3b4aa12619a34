//! The gateway's own services, answered without leaving the host unless
//! they must: [`dhcp`] (addresses, routes, DNS servers, MTU) and [`dns`]
//! (local names, forwarding to the upstream resolvers over UDP and TCP).

pub mod dhcp;
pub mod dns;
