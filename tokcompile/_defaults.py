"""Every default of tokcompile, in one place.

Signatures take ``Optional[...] = None`` and resolve here, so the CLI, the Python API and the
tests never repeat a literal default.
"""

METHOD = "evit"
PRECISION = "fp32"
BACKEND = "onnxruntime"
WEIGHTS = "auto"
SEED = 0
ONNX_OPSET = 18

# EViT (methods-reference.md §1.1): drop_loc=(3, 6, 9) for 12 blocks, keep 0.7, fuse on.
EVIT_KEEP_RATE = 0.7
EVIT_LAYERS_12 = (3, 6, 9)
EVIT_FUSE = True

# ToMe (methods-reference.md §2.1): r=13 (README DeiT-S/Ti), proportional attention on.
TOME_R = 13
TOME_PROP_ATTN = True

# AdaViT (methods-reference.md §5.1): sigmoid thresholds; head/layer gates from block 1 on.
ADAVIT_TOKEN_THRESHOLD = 0.6
ADAVIT_HEAD_THRESHOLD = 0.5
ADAVIT_LAYER_THRESHOLD = 0.5
ADAVIT_KEEP_LAYERS = 1

# eval
EVAL_BATCH = 16
EVAL_RANDOM_IMAGES = 32  # images drawn when no folder is given

# compare
COMPARE_BATCH = 4
COMPARE_SAMPLES = 2
# absolute tolerance on the logits, per precision actually executed
COMPARE_ATOL = {"fp32": 1e-4, "fp16": 5e-2, "bf16": 2e-1}

# bench
BENCH_BATCHES = (1, 16)
BENCH_ITERS = 20
BENCH_WARMUP = 3

ONNX_DOMAIN = "tokcompile"  # custom ONNX nodes and their functions
PLUGIN_NAMESPACE = "tokcompile"
PLUGIN_VERSION = "1"
# --plugins: which token-op nodes carry the plugin attributes (ops/_lowering.py). auto: only ops
# without an exact native lowering (none today); native TensorRT layers everywhere else.
PLUGINS = "auto"
PLUGIN_LIBRARY = "libtokcompile_plugins.so"  # self-registering build of plugins/ (CMakeLists.txt)

# export-triton: max_batch_size of ONNX models (TensorRT models take it from their profiles)
TRITON_MAX_BATCH = 16

# staged (per-image token count) bundles
PROFILE = "cpu-x86-2core"  # shipped, measured on the project's 2-core x86 machines
MAX_BUCKETS = 4
BUCKET_BATCH = 16  # batch size bucket selection optimises for
CALIB_IMAGES = 64
CALIB_GMACS_IMAGES = 4

# TensorRT engines (backends/tensorrt.py): every profile takes batch [1, TRT_MAX_BATCH] and is
# optimised for BUCKET_BATCH; the catch-all profile takes token counts [TRT_FALLBACK_MIN_TOKENS, all].
TRT_MAX_BATCH = 64
TRT_FALLBACK_MIN_TOKENS = 1
TRT_CACHE_DIR = "~/.cache/tokcompile"  # timing-<gpu>-<sm>-trt<version>.cache
PLUGIN_LIB_ENV = "TOKCOMPILE_PLUGIN_LIB"  # default --plugin-lib; else build/PLUGIN_LIBRARY in the repo
