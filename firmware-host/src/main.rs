//! `firmware-host`: talk to the cart microcontroller, simulate one, flash model bundles.
fn main() {}
