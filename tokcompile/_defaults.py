"""Every default of tokcompile outside the methods, in one place (each method's own defaults are
constants ``DEFAULT_*`` in ``methods/<name>.py``, so adding a method touches only its own files).

Signatures take ``Optional[...] = None`` and resolve here, so the CLI, the Python API and the
tests never repeat a literal default.
"""

METHOD = "evit"
PRECISION = "fp32"
BACKEND = "onnxruntime"
WEIGHTS = "auto"
SEED = 0
ONNX_OPSET = 18

# eval
EVAL_BATCH = 16
EVAL_RANDOM_IMAGES = 32  # images drawn when no folder is given

# compare
COMPARE_BATCH = 4
COMPARE_SAMPLES = 2
# absolute tolerance on the logits, per precision the bundle executes; checked on the images
# whose selections agree in every layer (a flipped selection is the selection check's business)
COMPARE_ATOL = {"fp32": 1e-4, "fp16": 5e-2, "bf16": 2e-1}
# --reference: what the bundle is compared with. "fp32": the fp32 eager model (the default for
# reduced-precision bundles: how often does fp16 change a selection, and what does that do to the
# output); "same": the eager model at the precision the bundle executes (isolates the runtime).
COMPARE_REFERENCE = "fp32"
# --min-agreement: per reduction layer, the share of images whose kept tokens (or ToMe groups)
# must be identical to the reference's, per precision the bundle executes. fp32: ONNX Runtime and
# eager torch differ only by summation order, so only exact near-ties may flip. fp16: rounding to
# 11 bits flips near-ties; on 200 photos with trained DINOv2-S weights (issue 12) EViT kept 87-96 %
# and ToMe 80.5-97 % of images identical per layer (output cosine >= 0.98), so below 75 % a layer
# flips more than rounding explains. bf16 (8 bits, unmeasured) gets a proportionally looser bound.
COMPARE_MIN_AGREEMENT = {"fp32": 0.95, "fp16": 0.75, "bf16": 0.5}

# sweep: at most this many lower input resolutions of the dense model as the baseline series,
# picked at the method points' GMACs (each is one more dense export and one more model per batch)
SWEEP_RESOLUTIONS = 3

# bench
BENCH_BATCHES = (1, 16)
BENCH_ITERS = 20
BENCH_WARMUP = 3
# largest --batch of bench/compare/eval/sweep: a batch holds all its activations at once (DeiT-B
# at 1024 images: ~2 GiB per attention matrix); 1,000,000 once asked ONNX Runtime for 561 GiB
MAX_BATCH = 1024

ONNX_DOMAIN = "tokcompile"  # custom ONNX nodes and their functions
PLUGIN_NAMESPACE = "tokcompile"
PLUGIN_VERSION = "1"
# --plugins: which token-op nodes carry the plugin attributes (ops/lowering.py). auto: only ops
# without an exact native lowering (none today); native TensorRT layers everywhere else.
PLUGINS = "auto"
PLUGIN_LIBRARY = "libtokcompile_plugins.so"  # self-registering build of plugins/ (CMakeLists.txt)

# Triton (tokcompile serve, export-triton): the entry model's dynamic batching and instances.
# max_batch_size: TensorRT bundles cap it at their profiles' largest batch.
TRITON_MAX_BATCH = 16
TRITON_MAX_QUEUE_DELAY_US = 1000  # how long the batcher waits to fill a batch
TRITON_INSTANCES = 1  # model instances (one Python-backend process each)
# tokcompile serve: loopback unless asked (the control API is token-restricted, inference is not)
SERVE_HOST = "127.0.0.1"
SERVE_HTTP_PORT = 8000
SERVE_GRPC_PORT = 8001
SERVE_METRICS_PORT = 8002
SERVE_READY_TIMEOUT_S = 300.0  # tritonserver start + every instance loading the bundle
SERVE_DRAIN_TIMEOUT_S = 30.0  # graceful stop: how long in-flight requests may take to finish

# staged (per-image token count) bundles
PROFILE = "cpu-x86-2core"  # shipped, measured on the project's 2-core x86 machines
MAX_BUCKETS = 4
BUCKET_BATCH = 16  # batch size bucket selection optimises for
# --calib: at most this many images, evenly spaced over the folder's sorted files; all of them
# feed the token counts, the buckets and the GMACs (each image run alone at its own counts)
CALIB_IMAGES = 64
CALIB_RANDOM_IMAGES = 16  # noise inputs without --calib (flagged in the manifest and report)

# TensorRT engines (backends/tensorrt.py): every profile takes batch [1, TRT_MAX_BATCH] and is
# optimised for BUCKET_BATCH; the catch-all profile takes token counts [TRT_FALLBACK_MIN_TOKENS, all].
TRT_MAX_BATCH = 64
TRT_FALLBACK_MIN_TOKENS = 1
TRT_CACHE_DIR = "~/.cache/tokcompile"  # timing-<gpu>-<sm>-trt<version>.cache
PLUGIN_LIB_ENV = "TOKCOMPILE_PLUGIN_LIB"  # default --plugin-lib; else build/PLUGIN_LIBRARY in the repo
# TF32 (--tf32/--no-tf32) for TensorRT engines and the planned engine commands of report.md: off.
# fp32 bundles are the numerically faithful build: TF32 rounds matmul inputs to 10-bit mantissas
# (about 1e-3 relative), which is enough to flip near-tied token selections (scoring runs in fp32
# even in fp16 builds, DESIGN.md §3) and to miss compare's fp32 tolerance. Faster builds use
# --precision fp16, or --tf32 where TF32's error is acceptable. trtexec and TensorRT for RTX enable
# TF32 unless told otherwise; Polygraphy leaves it off.
TRT_TF32 = False
# --backend tensorrt-rtx --target-sm default: every SM the installed TensorRT for RTX supports from
# Ampere (8.0) on. Turing (7.5) is left out: TensorRT for RTX 1.7 has no FP32 GEMM there (an fp32
# build for SM75 fails: "Cannot compile operation ... for Turing (SM75): FP32 GEMM is not
# supported"), and NVIDIA notes that a multi-target engine including Turing may run slower on
# Ampere and later. --target-sm 75 asks for it.
RTX_MIN_DEFAULT_SM = 80

# tokcompile profile: the grid it measures (one block, per width and batch, at each token count)
PROFILE_WIDTHS = "192,384,768"  # heads = width / 64
PROFILE_BATCHES = "1,16"
PROFILE_TOKENS = "8:256:8"
PROFILE_ITERS = 5  # timed runs per point (median)
