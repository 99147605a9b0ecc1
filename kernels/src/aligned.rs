//! A minimal 64-byte aligned, zero-initialised buffer for packed weights, so that every packed
//! panel starts on a cache line.

use std::alloc::{Layout, alloc_zeroed, dealloc, handle_alloc_error};
use std::ptr::NonNull;

/// Plain-old-data element types that are valid when all bits are zero.
///
/// # Safety
/// Implementors must be `Copy` types for which the all-zero bit pattern is a valid value.
pub(crate) unsafe trait Zeroable: Copy {}
// SAFETY: all-zero bits are valid values of these primitive types.
unsafe impl Zeroable for f32 {}
// SAFETY: as above.
unsafe impl Zeroable for i8 {}
// SAFETY: as above.
unsafe impl Zeroable for u8 {}
// SAFETY: as above.
unsafe impl Zeroable for i32 {}

pub(crate) struct AlignedVec<T: Zeroable> {
    ptr: NonNull<T>,
    len: usize,
}

const ALIGN: usize = 64;

impl<T: Zeroable> AlignedVec<T> {
    pub(crate) fn zeroed(len: usize) -> Self {
        if len == 0 || size_of::<T>() == 0 {
            return Self {
                ptr: NonNull::dangling(),
                len: 0,
            };
        }
        let layout = Self::layout(len);
        // SAFETY: layout has non-zero size; zeroed memory is a valid `[T]` by `Zeroable`.
        let raw = unsafe { alloc_zeroed(layout) } as *mut T;
        let Some(ptr) = NonNull::new(raw) else {
            handle_alloc_error(layout)
        };
        Self { ptr, len }
    }

    fn layout(len: usize) -> Layout {
        Layout::from_size_align(len * size_of::<T>(), ALIGN).expect("buffer size overflows isize")
    }
}

impl<T: Zeroable> Drop for AlignedVec<T> {
    fn drop(&mut self) {
        if self.len != 0 {
            // SAFETY: allocated in `zeroed` with exactly this layout.
            unsafe { dealloc(self.ptr.as_ptr() as *mut u8, Self::layout(self.len)) }
        }
    }
}

impl<T: Zeroable> std::ops::Deref for AlignedVec<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        // SAFETY: ptr is valid for len initialised elements (or dangling with len 0).
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl<T: Zeroable> std::ops::DerefMut for AlignedVec<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        // SAFETY: as in `deref`, and we hold `&mut self`.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl<T: Zeroable> Clone for AlignedVec<T> {
    fn clone(&self) -> Self {
        let mut v = Self::zeroed(self.len);
        v.copy_from_slice(self);
        v
    }
}

impl<T: Zeroable> std::fmt::Debug for AlignedVec<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AlignedVec(len = {})", self.len)
    }
}

// SAFETY: AlignedVec owns its buffer exclusively, like Vec<T>.
unsafe impl<T: Zeroable + Send> Send for AlignedVec<T> {}
// SAFETY: shared access only hands out `&[T]`.
unsafe impl<T: Zeroable + Sync> Sync for AlignedVec<T> {}
