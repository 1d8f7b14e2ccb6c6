//! Face restoration: faces found by RetinaFace ([`detect`]), aligned to the 512² template by
//! their five landmarks ([`align`]), restored by GFPGAN ([`gfpgan`]), CodeFormer
//! ([`codeformer`]) or RestoreFormer ([`restoreformer`]), and pasted back with a soft mask.

pub mod align;
pub mod codeformer;
pub mod detect;
pub mod gfpgan;
pub mod restoreformer;
