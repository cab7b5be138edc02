//! `ov-compiler`: the pure half of `ov` — load layers, resolve their order, lower them to an
//! InstallPlan, render scripts and write the bundle. No network, no printing, no async, no clap:
//! inputs in, bytes out (the crate's dependency list enforces the boundary).
//!
//! Pipeline: [`project`] (+ [`layer_parse`], [`yaml`]) → [`resolve`] → [`deploy`] → [`lower`] →
//! [`plan::InstallPlan`] → [`render`] (+ [`shell`], templates) → [`bundle`] (+ [`manifest`]);
//! [`bundle_read`] streams a finished bundle back, within limits, for `ov verify` and `ov inspect`;
//! [`repo`] reads remote layers from the repo cache the runner fills, pinned by `ov.lock`;
//! [`remote`] renders the runner's target-side scripts (probe, push bootstrap, ledger read).
//! [`emit`] hands a bundle over to Ansible (a playbook and role) or cloud-init (user-data).

pub mod batch;
pub mod bundle;
pub mod bundle_dir;
pub mod bundle_read;
pub mod deploy;
pub mod emit;
pub mod entries;
pub mod errors;
pub mod gzip;
pub mod layer;
pub mod layer_parse;
pub mod lower;
pub mod manifest;
pub mod origin;
pub mod par;
pub mod plan;
pub mod preflight;
pub mod project;
pub mod remote;
pub mod render;
pub mod repo;
pub mod resolve;
pub mod shell;
pub mod sign;
pub mod templates;
pub mod walk;
pub mod yaml;
