use std::sync::atomic::{AtomicUsize, Ordering};

use candle_core::{Result, Tensor};
use indexmap::IndexMap;
use tracing::info;

use crate::{
    kv_cache::{NormalCache, RecurrentStateSnapshot, SingleCache},
    paged_attention::block_hash::BlockHash,
    pipeline::KvCache,
    sequence::Sequence,
};

/// The most bytes of KV cache that finished sequences may hold in the
/// prefix cache, beside its count of sequences; unlimited by default. A
/// count alone bounds memory only by the longest prompt the model accepts.
static MAX_BYTES: AtomicUsize = AtomicUsize::new(usize::MAX);

/// Bounds the prefix cache by the bytes of KV cache it holds: the least
/// recently used sequences go first once either bound is passed. Applies to
/// every engine in the process.
pub fn set_prefix_cache_max_bytes(bytes: usize) {
    MAX_BYTES.store(bytes, Ordering::Relaxed);
}

#[derive(PartialEq, Eq, Debug, Hash)]
struct Tokens(Vec<u32>);

impl Tokens {
    /// Returns the length of the common prefix shared with `other`.
    fn shared_prefix_len(&self, other: &Self) -> usize {
        self.0
            .iter()
            .zip(other.0.iter())
            .take_while(|(a, b)| a == b)
            .count()
    }
}

impl From<Vec<u32>> for Tokens {
    fn from(value: Vec<u32>) -> Self {
        Self(value)
    }
}

#[derive(Clone)]
struct CacheElement {
    cache: Vec<Option<KvCache>>,
    /// Recurrent state snapshots for hybrid models (one per recurrent layer)
    recurrent_snapshots: Option<Vec<RecurrentStateSnapshot>>,
    audio_hashes: Option<Vec<u64>>,
    image_hashes: Option<Vec<u64>>,
    video_hashes: Option<Vec<u64>>,
}

impl CacheElement {
    /// How many tokens the normal layers hold. A finished sequence's last
    /// token was sampled but never run through the model, so its cache is one
    /// token shorter than its tokens; a longer match would read a position
    /// that was never written.
    fn cached_len(&self) -> usize {
        self.cache
            .iter()
            .flatten()
            .filter_map(|layer| match layer {
                KvCache::Normal { k, .. } => Some(k.current_seq_len()),
                _ => None,
            })
            .min()
            .unwrap_or(usize::MAX)
    }

    /// The bytes its tensors hold.
    fn bytes(&self) -> usize {
        let size = |t: Option<&Tensor>| t.map_or(0, |t| t.elem_count() * t.dtype().size_in_bytes());
        self.cache
            .iter()
            .flatten()
            .map(|layer| match layer {
                KvCache::Normal { k, v } => size(k.all_data()) + size(v.all_data()),
                KvCache::Rotating { k, v } => size(k.all_data()) + size(v.all_data()),
                KvCache::Shared { .. } => 0,
            })
            .sum()
    }

    fn can_rewind_to(&self, len: usize) -> bool {
        self.cache
            .iter()
            .flatten()
            .all(|layer| layer.try_set_len(len).is_ok())
    }
}

/// A copy of `layer` holding only its current tokens, in storage of its own
/// (a normal cache; rotating and shared layers are kept as they are).
fn compact(layer: &KvCache) -> Result<KvCache> {
    let KvCache::Normal { k, v } = layer else {
        return Ok(layer.clone());
    };
    let shrink = |cache: &SingleCache| -> Result<SingleCache> {
        let Some(data) = cache.current_data()? else {
            return Ok(cache.clone());
        };
        Ok(SingleCache {
            all_data: Some(data.force_contiguous()?),
            capacity_seq_len: cache.current_seq_len,
            ..cache.clone()
        })
    };
    Ok(KvCache::Normal {
        k: shrink(k)?,
        v: shrink(v)?,
    })
}

/// A copy of a compact `layer` cut to `len` tokens, in storage of the
/// capacity a sequence of that length gets everywhere else (whole blocks of
/// `NormalCache::CACHE_GROW_SIZE`): sequences of one length are batched
/// together, and their caches must have the same shape.
fn with_growable_capacity(layer: &KvCache, len: usize) -> Result<KvCache> {
    let KvCache::Normal { k, v } = layer else {
        return Ok(layer.clone());
    };
    let grow = |cache: &SingleCache| -> Result<SingleCache> {
        let Some(data) = cache.all_data() else {
            return Ok(cache.clone());
        };
        let capacity =
            len.div_ceil(NormalCache::CACHE_GROW_SIZE).max(1) * NormalCache::CACHE_GROW_SIZE;
        let mut shape = data.dims().to_vec();
        shape[cache.dim] = capacity;
        let all_data = Tensor::zeros(shape, data.dtype(), data.device())?;
        all_data.slice_set(&data.narrow(cache.dim, 0, len)?.contiguous()?, cache.dim, 0)?;
        Ok(SingleCache {
            all_data: Some(all_data),
            current_seq_len: len,
            capacity_seq_len: capacity,
            ..cache.clone()
        })
    };
    Ok(KvCache::Normal {
        k: grow(k)?,
        v: grow(v)?,
    })
}

pub struct PrefixCacheManagerV2 {
    caches: IndexMap<Tokens, CacheElement>,
    paged_recurrent_caches: IndexMap<Vec<BlockHash>, Vec<RecurrentStateSnapshot>>,
    n_on_device: usize,
    no_prefix_cache: bool,
    has_paged_attention: bool,
}

#[derive(Clone)]
pub enum MatchingCache {
    Normal {
        normal: Vec<Option<KvCache>>,
        recurrent_snapshots: Option<Vec<RecurrentStateSnapshot>>,
        images_to_keep: usize,
        audios_to_keep: usize,
        videos_to_keep: usize,
        toks: Vec<u32>,
        offset: usize,
    },
}

impl PrefixCacheManagerV2 {
    pub fn new(n_on_device: usize, no_prefix_cache: bool, has_paged_attention: bool) -> Self {
        if !no_prefix_cache && !has_paged_attention {
            info!("Prefix caching enabled (sequence-level, non-paged attention). Expect higher multi-turn throughput for both text and multimodal.");
        }
        PrefixCacheManagerV2 {
            caches: IndexMap::new(),
            paged_recurrent_caches: IndexMap::new(),
            n_on_device,
            no_prefix_cache,
            has_paged_attention,
        }
    }

    fn paged_recurrent_capacity(&self) -> usize {
        self.n_on_device.max(1).saturating_mul(8)
    }

    /// This always keeps the cache on the device.
    pub fn add_sequence(
        &mut self,
        seq: &mut Sequence,
        recurrent_snapshots: Option<Vec<RecurrentStateSnapshot>>,
    ) {
        // Do not cache if prefix caching disabled
        if self.no_prefix_cache {
            return;
        }

        // For paged attention, prefix caching is handled by the KVCacheManager.
        // PrefixCacheManagerV2 only handles non-paged attention caching.
        if !self.has_paged_attention {
            // A finished sequence's cache is preallocated in blocks of
            // `NormalCache::CACHE_GROW_SIZE` tokens and, after a batched step,
            // is a view into the whole batch's tensor: kept as it is, one entry
            // holds every sequence of its batch at full capacity. Keep a copy
            // of only the tokens it has.
            let cache = match seq
                .normal_cache()
                .iter()
                .map(|layer| layer.as_ref().map(compact).transpose())
                .collect::<Result<Vec<_>>>()
            {
                Ok(cache) => cache,
                Err(e) => {
                    tracing::warn!("prefix cache: could not copy a finished sequence's cache: {e}");
                    return;
                }
            };

            self.caches.insert(
                seq.get_toks().to_vec().into(),
                CacheElement {
                    cache,
                    recurrent_snapshots,
                    image_hashes: seq.image_hashes().map(|x| x.to_vec()),
                    audio_hashes: seq.audio_hashes().map(|x| x.to_vec()),
                    video_hashes: seq.video_hashes().map(|x| x.to_vec()),
                },
            );
        }
    }

    /// Evict the least recently used caches beyond `n_on_device` or beyond
    /// the byte bound ([`set_prefix_cache_max_bytes`]), wherever they are
    /// kept. Returns the number of evicted sequences.
    ///
    /// Upstream counted only caches on an accelerator, so on CPU every
    /// finished sequence stayed cached: memory grew with each new prompt.
    pub fn evict_caches(&mut self) -> Result<usize> {
        if self.no_prefix_cache {
            return Ok(0);
        }
        let max_bytes = MAX_BYTES.load(Ordering::Relaxed);
        let mut bytes: usize = self.caches.values().map(CacheElement::bytes).sum();
        let mut n_evicted = 0;
        while self.caches.len() > self.n_on_device || bytes > max_bytes {
            let Some((_, oldest)) = self.caches.shift_remove_index(0) else {
                break;
            };
            bytes -= oldest.bytes();
            n_evicted += 1;
        }
        Ok(n_evicted)
    }

    /// Evict all the caches.
    pub fn evict_all_caches(&mut self) -> Result<usize> {
        let len = self.caches.len();
        self.caches.clear();
        self.paged_recurrent_caches.clear();
        Ok(len)
    }

    /// Add a recurrent-state snapshot for a paged-attention block-hash prefix key.
    /// This is used by hybrid models to restore recurrent states alongside paged KV prefix hits.
    pub fn add_paged_recurrent_prefix(
        &mut self,
        key: Vec<BlockHash>,
        snapshots: Vec<RecurrentStateSnapshot>,
    ) {
        if self.no_prefix_cache
            || !self.has_paged_attention
            || key.is_empty()
            || snapshots.is_empty()
        {
            return;
        }

        // Maintain LRU order by reinserting on update.
        let _ = self.paged_recurrent_caches.shift_remove(&key);
        self.paged_recurrent_caches.insert(key, snapshots);

        while self.paged_recurrent_caches.len() > self.paged_recurrent_capacity() {
            let _ = self.paged_recurrent_caches.shift_remove_index(0);
        }
    }

    /// Lookup a recurrent-state snapshot for a paged-attention block-hash prefix key.
    /// Returns a cloned snapshot and updates LRU order.
    pub fn get_paged_recurrent_prefix(
        &mut self,
        key: &[BlockHash],
    ) -> Option<Vec<RecurrentStateSnapshot>> {
        if self.no_prefix_cache || !self.has_paged_attention || key.is_empty() {
            return None;
        }

        let key = key.to_vec();
        let snapshots = self.paged_recurrent_caches.shift_remove(&key)?;
        let out = snapshots.clone();
        self.paged_recurrent_caches.insert(key, snapshots);
        Some(out)
    }

    /// Search for a matching cache given some tokens. Image-containing sequences are now cached too.
    pub fn search_for_matching_cache(
        &mut self,
        toks: &[u32],
        image_hashes: Option<&[u64]>,
        audio_hashes: Option<&[u64]>,
        video_hashes: Option<&[u64]>,
    ) -> Result<Option<MatchingCache>> {
        // Do not search if prefix caching disabled or no tokens
        if self.no_prefix_cache || toks.is_empty() {
            return Ok(None);
        }

        if self.has_paged_attention {
            // For paged attention, prefix caching is handled by the KVCacheManager.
            // PrefixCacheManagerV2 only handles non-paged attention caching.
            return Ok(None);
        }

        let toks = Tokens(toks.to_vec());

        let mut best_match: Option<(usize, &CacheElement, usize, usize, usize, usize)> = None;
        for (index, (k, v)) in self.caches.iter().enumerate() {
            let match_len = toks.shared_prefix_len(k).min(v.cached_len());
            if match_len == 0 {
                continue;
            }

            let images_match_until = match image_hashes {
                Some(input_hashes) => match &v.image_hashes {
                    Some(cached_hashes) => input_hashes
                        .iter()
                        .zip(cached_hashes)
                        .take_while(|(a, b)| a == b)
                        .count(),
                    None => 0,
                },
                None => 0,
            };

            let audios_match_until = match audio_hashes {
                Some(input_hashes) => match &v.audio_hashes {
                    Some(cached_hashes) => input_hashes
                        .iter()
                        .zip(cached_hashes)
                        .take_while(|(a, b)| a == b)
                        .count(),
                    None => 0,
                },
                None => 0,
            };

            // Vision/audio models can use repeated placeholder tokens (e.g. <image_soft_token>)
            // that are identical regardless of the actual image/audio content. This means
            // token-level matching can extend through image/audio regions even when the
            // underlying content differs, leaving stale vision/audio encoder outputs in the
            // KV cache. Skip entries where any overlapping images or audios diverge.
            let cached_image_count = v.image_hashes.as_ref().map_or(0, |h| h.len());
            let input_image_count = image_hashes.map_or(0, |h| h.len());
            if images_match_until < input_image_count.min(cached_image_count) {
                continue;
            }

            let cached_audio_count = v.audio_hashes.as_ref().map_or(0, |h| h.len());
            let input_audio_count = audio_hashes.map_or(0, |h| h.len());
            if audios_match_until < input_audio_count.min(cached_audio_count) {
                continue;
            }

            let videos_match_until = match video_hashes {
                Some(input_hashes) => match &v.video_hashes {
                    Some(cached_hashes) => input_hashes
                        .iter()
                        .zip(cached_hashes)
                        .take_while(|(a, b)| a == b)
                        .count(),
                    None => 0,
                },
                None => 0,
            };

            let cached_video_count = v.video_hashes.as_ref().map_or(0, |h| h.len());
            let input_video_count = video_hashes.map_or(0, |h| h.len());
            if videos_match_until < input_video_count.min(cached_video_count) {
                continue;
            }

            // Sliding/rotating caches only retain a fixed tail. If a cache has already
            // truncated older tokens, it can still safely serve an exact extension of the
            // cached prefix, but it cannot be rewound to an earlier logical length. Skip such
            // candidates here so a rolled-over cache does not block a shorter valid prefix hit.
            if !v.can_rewind_to(match_len) {
                continue;
            }

            if best_match
                .as_ref()
                .is_none_or(|(len, _, _, _, _, _)| match_len > *len)
            {
                best_match = Some((
                    match_len,
                    v,
                    images_match_until,
                    audios_match_until,
                    videos_match_until,
                    index,
                ));
            }
        }

        if let Some((
            match_len,
            cache_element,
            images_match_until,
            audios_match_until,
            videos_match_until,
            index,
        )) = best_match
        {
            let new_toks = toks.0[match_len..].to_vec();
            if new_toks.is_empty() {
                return Ok(None);
            }

            let mut cache = cache_element.clone();
            for layer in cache.cache.iter_mut().flatten() {
                *layer = with_growable_capacity(layer, match_len)?;
            }
            // Least recently used first out: a prefix in use stays.
            let last = self.caches.len() - 1;
            self.caches.move_index(index, last);
            // Count how many input images are not already cached
            let images_to_keep = if let Some(input_hashes) = image_hashes {
                input_hashes.len().saturating_sub(images_match_until)
            } else {
                0
            };
            let audios_to_keep = if let Some(input_hashes) = audio_hashes {
                input_hashes.len().saturating_sub(audios_match_until)
            } else {
                0
            };
            let videos_to_keep = if let Some(input_hashes) = video_hashes {
                input_hashes.len().saturating_sub(videos_match_until)
            } else {
                0
            };
            for layer in cache.cache.iter_mut().flatten() {
                if layer.try_set_len(match_len).is_err() {
                    return Ok(None);
                }
            }
            for layer in cache.cache.iter_mut().flatten() {
                layer.set_len(match_len)?;
            }
            return Ok(Some(MatchingCache::Normal {
                normal: cache.cache,
                recurrent_snapshots: cache.recurrent_snapshots,
                images_to_keep,
                audios_to_keep,
                videos_to_keep,
                toks: new_toks,
                offset: match_len,
            }));
        }

        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, Tensor};

    use super::{CacheElement, MatchingCache, PrefixCacheManagerV2};
    use crate::kv_cache::{KvCache, RotatingCache, SingleCache};

    fn make_cache_tensor(len: usize) -> candle_core::Result<Tensor> {
        Tensor::zeros((1, 1, len, 1), DType::F32, &Device::Cpu)
    }

    fn make_rotating_kv_cache(
        logical_len: usize,
        sliding_window: usize,
    ) -> candle_core::Result<KvCache> {
        let src = make_cache_tensor(logical_len)?;
        let mut k = RotatingCache::new(2, sliding_window, sliding_window);
        let mut v = RotatingCache::new(2, sliding_window, sliding_window);
        let _ = k.append(&src)?;
        let _ = v.append(&src)?;
        Ok(KvCache::Rotating { k, v })
    }

    fn make_normal_kv_cache(logical_len: usize) -> candle_core::Result<KvCache> {
        let src = make_cache_tensor(logical_len)?;
        let mut k = SingleCache::new(2, logical_len, logical_len);
        let mut v = SingleCache::new(2, logical_len, logical_len);
        k.append(&src)?;
        v.append(&src)?;
        Ok(KvCache::Normal { k, v })
    }

    #[test]
    fn evicts_least_recently_used_beyond_the_byte_bound() -> candle_core::Result<()> {
        let element = |len| -> candle_core::Result<CacheElement> {
            Ok(CacheElement {
                cache: vec![Some(make_normal_kv_cache(len)?)],
                recurrent_snapshots: None,
                audio_hashes: None,
                image_hashes: None,
                video_hashes: None,
            })
        };
        // Each element holds k and v of `len` F32 values: 8 bytes a token.
        let mut prefix_cacher = PrefixCacheManagerV2::new(16, false, false);
        prefix_cacher.caches.insert(vec![1].into(), element(10)?);
        prefix_cacher.caches.insert(vec![2].into(), element(20)?);
        prefix_cacher.caches.insert(vec![3].into(), element(30)?);
        assert_eq!(prefix_cacher.caches[0].bytes(), 80);

        super::set_prefix_cache_max_bytes(400);
        assert_eq!(prefix_cacher.evict_caches()?, 1);
        assert_eq!(prefix_cacher.evict_caches()?, 0);
        super::set_prefix_cache_max_bytes(usize::MAX);
        let left: Vec<_> = prefix_cacher.caches.keys().map(|k| k.0.clone()).collect();
        assert_eq!(left, vec![vec![2], vec![3]]);
        Ok(())
    }

    #[test]
    fn skips_rolled_over_rotating_candidate_that_cannot_rewind() -> candle_core::Result<()> {
        let mut prefix_cacher = PrefixCacheManagerV2::new(1, false, false);

        prefix_cacher.caches.insert(
            vec![1, 2, 3, 4, 5, 6, 7, 8, 9, 10].into(),
            CacheElement {
                cache: vec![Some(make_rotating_kv_cache(10, 4)?)],
                recurrent_snapshots: None,
                audio_hashes: None,
                image_hashes: None,
                video_hashes: None,
            },
        );
        prefix_cacher.caches.insert(
            vec![1, 2, 3, 4, 5, 9].into(),
            CacheElement {
                cache: vec![Some(make_normal_kv_cache(6)?)],
                recurrent_snapshots: None,
                audio_hashes: None,
                image_hashes: None,
                video_hashes: None,
            },
        );

        let hit = prefix_cacher.search_for_matching_cache(
            &[1, 2, 3, 4, 5, 6, 7, 99],
            None,
            None,
            None,
        )?;

        match hit {
            Some(MatchingCache::Normal { toks, offset, .. }) => {
                assert_eq!(offset, 5);
                assert_eq!(toks, vec![6, 7, 99]);
            }
            None => panic!("expected a shorter valid prefix-cache hit"),
        }

        Ok(())
    }

    #[test]
    fn allows_exact_extension_from_rolled_over_rotating_cache() -> candle_core::Result<()> {
        let mut prefix_cacher = PrefixCacheManagerV2::new(1, false, false);

        prefix_cacher.caches.insert(
            vec![1, 2, 3, 4, 5, 6, 7, 8, 9, 10].into(),
            CacheElement {
                cache: vec![Some(make_rotating_kv_cache(10, 4)?)],
                recurrent_snapshots: None,
                audio_hashes: None,
                image_hashes: None,
                video_hashes: None,
            },
        );

        let hit = prefix_cacher.search_for_matching_cache(
            &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11],
            None,
            None,
            None,
        )?;

        match hit {
            Some(MatchingCache::Normal { toks, offset, .. }) => {
                assert_eq!(offset, 10);
                assert_eq!(toks, vec![11]);
            }
            None => panic!("expected exact-extension prefix-cache hit"),
        }

        Ok(())
    }
}
