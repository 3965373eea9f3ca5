//! ttpflow: honeypot fleet events to MITRE ATT&CK technique tags, on differential dataflow.
//!
//! This crate is everything that touches the outside world: the command line, the rule
//! loader, file sources and sinks, the Kafka source and publisher, PostgreSQL, and the runtimes that
//! drive timely workers. The graph
//! itself lives in the `ttpflow-dataflows` crate.

pub mod artifacts;
pub mod cli;
pub mod config;
pub mod files;
pub mod intel_tables;
pub mod kafka;
pub mod navigator;
pub mod postgres;
pub mod publish;
pub mod rules;
pub mod runtime;
pub mod stream;
