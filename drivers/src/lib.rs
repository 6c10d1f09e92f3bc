//! Device drivers of the mqnet kernel, written to be unit-tested on the host:
//! PCI configuration access and capabilities, MSI-X, the virtio-pci modern
//! transport and the multiqueue virtio-net device (issue 4 fills this in).
#![no_std]
#![deny(unsafe_code)]
