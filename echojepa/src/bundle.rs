//! (module placeholder: owned by its work stream, see DESIGN.md)
