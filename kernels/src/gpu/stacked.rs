//! Stacked expert weights on the device (in progress).
