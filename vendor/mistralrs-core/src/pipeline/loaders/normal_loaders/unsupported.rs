//! Without the `plain-models` feature: the loaders of models in safetensors
//! keep their names (the crate's public API and `NormalLoaderType` still name
//! them), but each one refuses to load, with this message. GGUF models load
//! through their own pipeline and are not affected.

use super::*;

fn unsupported<T>() -> Result<T> {
    anyhow::bail!(
        "this build of mistralrs-core loads GGUF models only (the `plain-models` feature is off)"
    )
}

macro_rules! unsupported_loaders {
    ($($name:ident),* $(,)?) => {$(
        pub struct $name;

        impl NormalModelLoader for $name {
            fn load(
                &self,
                _config: &str,
                _vb: ShardedVarBuilder,
                _normal_loading_metadata: NormalLoadingMetadata,
                _attention_mechanism: AttentionImplementation,
            ) -> Result<Box<dyn NormalModel + Send + Sync>> {
                unsupported()
            }
            fn load_xlora(
                &self,
                _config: &str,
                _vb: ShardedVarBuilder,
                _lora_config: &[((String, String), LoraConfig)],
                _xlora_config: Option<XLoraConfig>,
                _xlora_ordering: Ordering,
                _normal_loading_metadata: NormalLoadingMetadata,
                _preload_adapters: &Option<HashMap<String, (ShardedVarBuilder, LoraConfig)>>,
            ) -> Result<Box<dyn NormalModel + Send + Sync>> {
                unsupported()
            }
            fn is_gptx(&self, _config: &str) -> Result<bool> {
                unsupported()
            }
            fn supports_paged_attention(&self, _config: &str) -> Result<bool> {
                unsupported()
            }
            fn get_config_repr(&self, _config: &str) -> Result<Box<dyn Debug>> {
                unsupported()
            }
        }

        impl IsqModelLoader for $name {}

        unsupported_device_mapping!($name, unsupported);
    )*};
}

unsupported_loaders!(
    MistralLoader,
    GemmaLoader,
    LlamaLoader,
    MixtralLoader,
    Phi2Loader,
    Phi3Loader,
    Qwen2Loader,
    Gemma2Loader,
    Starcoder2Loader,
    Phi3_5MoELoader,
    DeepSeekV2Loader,
    DeepSeekV3Loader,
    Qwen3Loader,
    GLM4Loader,
    GLM4MoeLiteLoader,
    GLM4MoeLoader,
    Qwen3MoELoader,
    SmolLm3Loader,
    GraniteMoeHybridLoader,
    GptOssLoader,
    Qwen3NextLoader,
);
