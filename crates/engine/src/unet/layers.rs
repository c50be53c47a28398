//! The layer constructors the UNet is built from, in one place: swapping in faster convolutions or group norms
//! (see `crate::ops`) means editing these re-exports only.

pub(crate) use crate::ops::{conv2d, group_norm, Conv2d, GroupNorm};
pub(crate) use candle_nn::{layer_norm, linear, linear_no_bias, Conv2dConfig, LayerNorm, Linear};
