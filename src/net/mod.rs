//! Network front-ends: the kernel's TCP ([`kernel`]); the userspace stacks live beside it.

#[allow(unsafe_code)]
pub mod dpdk;
pub mod kernel;
