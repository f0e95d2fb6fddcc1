//! The cluster: a sans-IO snapshot protocol (`protocol`) over a fixed datagram format (`wire`).
//! Every node is its own global counter: its count plus the latest count of every live peer.

pub mod protocol;
pub mod sim;
pub mod wire;
