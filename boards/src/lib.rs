//! Board profiles for supported cart computers: parsing and validation
