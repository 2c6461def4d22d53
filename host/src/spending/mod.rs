//! What a run costs, read from run-log entries: prices per model ([`pricing`]), what a recorded
//! run spent per role ([`accounting`]), and what a run is projected to spend from its strategy's
//! estimate ([`projection`]).

pub mod accounting;
pub mod pricing;
pub mod projection;
