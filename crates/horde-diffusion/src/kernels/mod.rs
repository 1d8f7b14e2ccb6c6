//! Our own CPU kernels, where candle's CPU ops are slow or hungry for what Stable Diffusion
//! does (attention, stride-1 convolutions). Each is a candle custom op with a CPU implementation only; the networks call it on
//! the CPU in f32 and candle's own ops everywhere else (CUDA, Metal, half precision), so a GPU
//! build keeps working unchanged. Each kernel is tested against candle's ops on random inputs
//! of many shapes.

pub mod attention;
pub mod conv;
pub mod winograd;
