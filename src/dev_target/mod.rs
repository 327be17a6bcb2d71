//! `roster dev-target`: an in-memory SCIM 2.0 server for demos, tests and benchmarks.
//! Depends only on `scim` types.
