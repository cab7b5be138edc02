//! it: integration tests of the `ov` binary and of bundles run on a real Debian userland.

mod bundle_chroot;
mod support {
    pub mod rootfs;
}
