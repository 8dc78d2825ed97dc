"""Prompts and special token ids, in one place.

The values are the Qwen2-VL / ColQwen2 recipe (see docs/ARCHITECTURE.md): changing any
of them changes embeddings and answers, so tests pin them token for token.
"""

# Special token ids of the Qwen2-VL tokenizer.
ENDOFTEXT_ID = 151643  # <|endoftext|>, also the padding token
IM_START_ID = 151644  # <|im_start|>
IM_END_ID = 151645  # <|im_end|>
VISION_START_ID = 151652  # <|vision_start|>
VISION_END_ID = 151653  # <|vision_end|>
IMAGE_PAD_ID = 151655  # <|image_pad|>, expanded to one token per merged 2x2 patch
VIDEO_PAD_ID = 151656  # <|video_pad|>
PAD_ID = ENDOFTEXT_ID
EOS_IDS = (IM_END_ID, ENDOFTEXT_ID)

IMAGE_PAD = "<|image_pad|>"
IMAGE_PLACEHOLDER = "<|vision_start|><|image_pad|><|vision_end|>"

# ColQwen2 (colpali-engine >= 0.3.4, and transformers' ColQwen2Processor).
RETRIEVER_PAGE_PROMPT = (
    "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Describe the image.<|im_end|><|endoftext|>"
)
RETRIEVER_QUERY_PREFIX = "Query: "  # the checkpoint was trained with it: keep it
RETRIEVER_QUERY_AUGMENTATION = "<|endoftext|>" * 10  # "query augmentation" buffer tokens
RETRIEVER_QUERY_SUFFIX = RETRIEVER_QUERY_AUGMENTATION + "\n"
RETRIEVER_MAX_PIXELS = 768 * 28 * 28  # ~768 image tokens per page
RETRIEVER_MIN_PIXELS = 4 * 28 * 28

# Token caps, checked before a model runs (one clear line instead of an allocation failure).
# Queries: ColQwen2 was trained on short questions (colpali-engine pads queries to 50
# tokens), and search time grows with the number of query vectors (each is scored
# against every page token); 512 tokens is ~2,000 characters of English, far more than
# a question, while a 100,000-character paste (23k tokens) would ask onnxruntime for
# many GB for the text model's attention.
MAX_QUERY_TOKENS = 512
# Generation prompts (system turn + page images + question): Qwen2-VL-2B's context is
# 32,768 positions, but prefill memory grows with the square of the prompt: attention
# scores are 12 heads x S^2 x 4 bytes (3.2 GB at 8,192 tokens, 12.9 GB at 16,384) on top
# of the weights and a 57 KB/token k/v cache. 8,192 tokens holds six pages at the full
# 1,280 image tokens each plus a long question, and stays within a 16 GB machine.
MAX_PROMPT_TOKENS = 8192

# Qwen2-VL-Instruct chat prompt (no BOS token).
SYSTEM_PROMPT = "You are a helpful assistant."
GENERATOR_MAX_PIXELS = 1280 * 28 * 28
GENERATOR_MIN_PIXELS = 4 * 28 * 28

# Image processor constants (Qwen2-VL): 14-px patches, 2x2 merge, 2 frames per patch.
PATCH_SIZE = 14
MERGE_SIZE = 2
TEMPORAL_PATCH_SIZE = 2
IMAGE_FACTOR = PATCH_SIZE * MERGE_SIZE  # 28
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# Hard limit on any image we decode, whatever its source: a decompression bomb
# or a 40000-px scan must not exhaust memory before we resize it.
MAX_DECODE_PIXELS = 20_000 * 20_000
# Image files given to `ask --image` (and `models compare`): their size is read from the
# header and checked before anything is decoded. 64 Mpx is a 9248x6936 photo, more than
# any camera or A4 scan at 600 dpi (35 Mpx) and 64x what the generator reads (1 Mpx); a
# 64 Mpx RGB image decodes to 192 MB. Pillow's own global limit is left at its default.
MAX_IMAGE_FILE_PIXELS = 64_000_000
