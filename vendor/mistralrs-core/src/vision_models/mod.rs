use std::any::Any;

use candle_core::Tensor;

pub(crate) mod preprocessor_config;
pub(crate) mod processor_config;
pub(crate) mod siglip;

// The models (a third of the crate) build only with the `vision` feature.
// Without it, the text halves of their configurations remain, because the
// rotary embeddings in `crate::layers` are built from them.
#[cfg(feature = "vision")]
pub(crate) mod clip;
#[cfg(feature = "vision")]
pub(crate) mod conformer;
#[cfg(feature = "vision")]
pub(crate) mod idefics2;
#[cfg(feature = "vision")]
pub(crate) use idefics2::idefics2_input_processor;
#[cfg(feature = "vision")]
pub(crate) mod image_processor;
#[cfg(feature = "vision")]
pub(crate) mod llava;
#[cfg(feature = "vision")]
pub(crate) mod mllama;
#[cfg(feature = "vision")]
pub(crate) mod phi3;
#[cfg(feature = "vision")]
pub(crate) use phi3::phi3_inputs_processor;
#[cfg(feature = "vision")]
pub(crate) mod qwen2_5_vl;
#[cfg(feature = "vision")]
pub(crate) mod qwen2vl;
#[cfg(feature = "vision")]
pub(crate) use llava::llava15;
#[cfg(feature = "vision")]
pub(crate) use llava::llava_inputs_processor;
#[cfg(feature = "vision")]
pub(crate) use llava::llava_next;
#[cfg(feature = "vision")]
pub(crate) use llava::llava_next_inputs_processor;
#[cfg(feature = "vision")]
pub(crate) mod idefics3;
#[cfg(feature = "vision")]
pub(crate) mod minicpmo;
#[cfg(feature = "vision")]
pub(crate) mod phi4;
#[cfg(feature = "vision")]
pub(crate) use phi4::inputs_processor;
#[cfg(feature = "vision")]
pub(crate) mod gemma3;
#[cfg(feature = "vision")]
pub(crate) mod gemma3n;
#[cfg(feature = "vision")]
pub(crate) mod gemma4;
#[cfg(feature = "vision")]
pub(crate) mod llama4;
#[cfg(feature = "vision")]
pub(crate) mod mistral3;
#[cfg(feature = "vision")]
pub(crate) mod qwen3_5;
#[cfg(feature = "vision")]
pub(crate) mod qwen3_5_moe;
#[cfg(feature = "vision")]
pub(crate) mod qwen3_vl;
#[cfg(feature = "vision")]
pub(crate) mod qwen3_vl_moe;
#[cfg(feature = "vision")]
pub(crate) mod voxtral;

#[cfg(not(feature = "vision"))]
pub(crate) mod conformer {
    pub(crate) mod config;
}
#[cfg(not(feature = "vision"))]
pub(crate) mod gemma3 {
    pub mod config;
}
#[cfg(not(feature = "vision"))]
pub(crate) mod gemma3n {
    pub mod config;
}
#[cfg(not(feature = "vision"))]
pub(crate) mod llama4 {
    mod config;
    pub(crate) use config::TextConfig;
}
#[cfg(not(feature = "vision"))]
pub(crate) mod mllama {
    mod config;
    pub(crate) use config::{MLlamaRopeScaling, MLlamaRopeType, MLlamaTextConfig};
}
#[cfg(not(feature = "vision"))]
pub(crate) mod phi4 {
    mod config;
    pub(crate) use config::Phi4MMConfig;
}

use crate::pipeline::text_models_inputs_processor::{FlashParams, PagedAttentionInputMetadata};

pub struct ModelInputs {
    pub input_ids: Tensor,
    pub seqlen_offsets: Vec<usize>,
    pub context_lens: Vec<(usize, usize)>,
    pub position_ids: Vec<usize>,
    pub pixel_values: Option<Tensor>,
    pub model_specific_args: Box<dyn Any>,
    pub paged_attn_meta: Option<PagedAttentionInputMetadata>,
    pub flash_meta: FlashParams,
}
