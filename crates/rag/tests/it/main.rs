//! The rag crate's integration tests: retrieval with the real all-MiniLM-L6-v2, the HTTP
//! routes on loopback, and crash safety under SIGKILL.

mod common;
mod crash;
mod http;
mod retrieval;
