//! The simulation: an in-process cluster, a fake kubelet and a scheduler stand-in that calls the
//! real HTTPS extender, so `gantry demo` and the full-loop tests run the same code as `serve`.

pub mod cluster;
pub mod demo;
pub mod ec2;
pub mod kubelet;
pub mod pdb;
pub mod scenario;
pub mod scheduler;
