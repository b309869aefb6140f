//! Integration tests: the real `flowers` binary with CPU slots and a small real workload
//! (`workload.py`, an HTTP server), on loopback, on free ports.

mod support;

mod adoption;
mod api;
mod archives;
mod cli;
mod config_errors;
mod deploy;
mod devices;
mod engines;
mod gateway;
mod jobs;
mod lifecycle;
mod logs;
mod models;
mod promotion;
mod tidy;
mod video;
mod video_detect;
