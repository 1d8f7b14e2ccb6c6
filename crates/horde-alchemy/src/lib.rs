//! The networks of the horde's alchemy (interrogation) forms and of the worker's NSFW censor,
//! on candle, each loaded from its original checkpoint layout (transformers' safetensors) and
//! pinned to the reference implementation's numbers by fixtures from PyPI (`tools/alchemy-fixtures`):
//!
//! * [`clip`]: CLIP's image and text towers (ViT-L/14 as the horde uses it) and the image
//!   preprocessing of `CLIPImageProcessor`;
//! * [`safety`]: the Stable Diffusion safety checker (CLIP vision, its projection and the
//!   concept embeddings with their thresholds): the `nsfw` form's verdict and the censor's;
//! * [`interrogate`]: the `interrogation` form: the image ranked against the horde's term lists
//!   by CLIP similarity, in the public result shape;
//! * [`caption`]: the `caption` form: BLIP's captioning model and its tokenizer;
//! * [`weights`]: their checkpoints read tensor by tensor, so that loading holds one copy.

pub mod caption;
pub mod clip;
pub mod interrogate;
pub mod safety;
pub mod weights;
