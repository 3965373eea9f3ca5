//! ttpflow: honeypot fleet events to MITRE ATT&CK technique tags, on differential dataflow.
//!
//! This crate is everything that touches the outside world: the command line, the rule
//! loader, file sources and sinks, and the runtime that drives timely workers. The graph
//! itself lives in the `ttpflow-dataflows` crate.

pub mod artifacts;
pub mod cli;
pub mod files;
pub mod intel_tables;
pub mod navigator;
pub mod postgres;
pub mod reload;
pub mod rules;
pub mod runtime;
