//! Integration tests: one binary, one module per area.

mod common;
mod pipeline;
mod regression;
mod rules_pack;
mod schemas;
