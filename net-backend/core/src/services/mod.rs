//! The gateway's own services, answered without leaving the host unless
//! they must: [`dhcp`] (addresses, routes, DNS servers, MTU), [`dns`]
//! (local names, forwarding to the upstream resolvers over UDP and TCP),
//! and for IPv6 [`ndp`] (neighbor and router discovery: SLAAC, the default
//! route, MTU and DNS) and [`dhcpv6`] (addresses and DNS for clients that
//! ask).

pub mod dhcp;
pub mod dhcpv6;
pub mod dns;
pub mod ndp;
