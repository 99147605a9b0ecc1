//! no_std wire protocol between the cart computer and its microcontroller.
#![cfg_attr(not(any(feature = "std", test)), no_std)]
