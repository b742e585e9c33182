//! Without the `vision` feature: the multimodal loaders keep their names (the
//! crate's public API and `MultimodalLoaderType` still name them), but each
//! one refuses to load. `MultimodalLoader` asks for the model's layer count
//! and sizes before it loads anything, so a build without the feature fails
//! there with this message, before a processor or prefixer is ever asked for.

use super::*;

fn unsupported<T>() -> Result<T> {
    anyhow::bail!("this build of mistralrs-core has no multimodal models (the `vision` feature is off)")
}

macro_rules! unsupported_loaders {
    ($($name:ident),* $(,)?) => {$(
        pub struct $name;

        impl MultimodalModelLoader for $name {
            fn load(
                &self,
                _config: &str,
                _vb: ShardedVarBuilder,
                _normal_loading_metadata: NormalLoadingMetadata,
                _attention_mechanism: AttentionImplementation,
            ) -> Result<Box<dyn MultimodalModel + Send + Sync>> {
                unsupported()
            }
            fn is_gptx(&self, _config: &str) -> bool {
                false
            }
            fn get_config_repr(&self, _config: &str) -> Result<Box<dyn Debug>> {
                unsupported()
            }
            fn get_processor(
                &self,
                _model_config: &str,
                _processor_config: Option<ProcessorConfig>,
                _preprocessor_config: PreProcessorConfig,
                _max_edge: Option<u32>,
            ) -> Arc<dyn Processor + Send + Sync> {
                unreachable!("no multimodal model loads without the `vision` feature")
            }
            fn supports_paged_attention(&self, _config: &str) -> bool {
                false
            }
            fn modalities(&self, _config: &str) -> Result<Modalities> {
                unsupported()
            }
            fn prefixer(&self, _config: &str) -> Arc<dyn MultimodalPromptPrefixer> {
                unreachable!("no multimodal model loads without the `vision` feature")
            }
        }

        impl IsqModelLoader for $name {}

        unsupported_device_mapping!($name, unsupported);
    )*};
}

unsupported_loaders!(
    Phi3VLoader,
    Idefics2Loader,
    LLaVANextLoader,
    LLaVALoader,
    VLlamaLoader,
    Qwen2VLLoader,
    Idefics3Loader,
    MiniCpmOLoader,
    Phi4MMLoader,
    Qwen2_5VLLoader,
    Gemma3Loader,
    Mistral3Loader,
    VLlama4Loader,
    Gemma3nLoader,
    Qwen3VLLoader,
    Qwen3VLMoELoader,
    Qwen3_5Loader,
    Qwen3_5MoeLoader,
    VoxtralLoader,
    Gemma4Loader,
);
