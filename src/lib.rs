//! AWS RDS IAM database authentication for OpenResty and Kong.
pub mod conf;
pub mod error;
pub mod region;
pub mod signer;
