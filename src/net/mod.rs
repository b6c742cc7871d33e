//! Network front-ends: the kernel's TCP ([`kernel`]) and the userspace TCP stack
//! ([`stack`], smoltcp) on a Linux tap device ([`tap`]).

#[allow(unsafe_code)]
pub mod dpdk;
pub mod kernel;
pub mod stack;
pub mod tap;
