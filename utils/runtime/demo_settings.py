"""The CPU demo's settings, declared once: Make_Demo.py's, and those every script that can prepare the
demo (PREPARE_DEMO, set by configs/demo.py) accepts in a config file or as --KEY=value.

Plain constants, no imports: a script reads them before torch is imported, so a bad key or value
is refused at once. utils/apps/demo.py says how each stage is made.
"""

DEMO_DIR = "./outputs_spdnet_adaptation/demo"  # the world, the gate and every demo result go here
DEMO_SEED = 0  # seeds the demo world's scenes, rain and gate
DEMO_NUM_TRAIN = 2000  # training scenes of a demo world (clean + rainy copy each)
DEMO_NUM_VAL = 200  # validation scenes (demo and pretraining worlds)
DEMO_IMAGE_SIZE = 128  # scene size in pixels (a multiple of 32: the detector's input)
DEMO_MAX_OBJECTS = 3  # each scene holds 1..DEMO_MAX_OBJECTS shapes
DEMO_NUM_CLASSES = 3  # shape classes drawn: circle, square, triangle (up to 6: + diamond, cross, ring)
DEMO_RAIN_PRESETS = ["medium"]  # rain strengths of the rainy copies ("light", "medium", "heavy")
DEMO_GATE_EPOCHS = 2  # epochs of the rain gate (Training_Rain_Detector.py, small_cnn)
DEMO_WEIGHTS_DIR = "./demo_weights"  # the kept stand-ins: detector/ and spdnet_original.pt (in the repository)
DEMO_PRETRAIN = False  # True: (re)train the kept stand-ins on the pretraining world instead of building DEMO_DIR
DEMO_PRETRAIN_DIR = "./outputs_spdnet_adaptation/demo_pretrain"  # the pretraining world's data (not kept)
DEMO_PRETRAIN_SEED = 1000  # the pretraining world's scenes and rain, and the two trainings below
DEMO_PRETRAIN_NUM_TRAIN = 4000  # training scenes of the pretraining world
DEMO_DETECTOR_FAMILY = "rt_detr"  # the kept detector: "rt_detr" (in detector/) or "rt_detr_v2" (detector_rt_detr_v2/)
DEMO_DETECTOR_STEPS = 2500  # optimizer steps of the detector's training on clean images
DEMO_DETECTOR_BATCH_SIZE = 16  # images per detector step
DEMO_DETECTOR_LEARNING_RATE = 1e-3  # peak of the detector's one-cycle schedule
DEMO_DETECTOR_WIDTH = 32  # detector backbone width of the first stage (then x2, x4, x8)
DEMO_DETECTOR_D_MODEL = 128  # detector hidden size
DEMO_DETECTOR_DECODER_LAYERS = 3  # detector decoder layers
DEMO_DETECTOR_QUERIES = 30  # detector object queries
DEMO_DETECTOR_DENOISING = 30  # denoising queries while the detector trains
DEMO_SPDNET_N_FEATS = 16  # width of the demo SPDNet (the official one: 32; 8 learnt only the haze)
DEMO_SPDNET_N_RESBLOCKS = 1  # residual blocks of the demo SPDNet (the official one: 3)
DEMO_SPDNET_STEPS = 2000  # optimizer steps of the deraining training (pixel MSE to the clean image)
DEMO_SPDNET_BATCH_SIZE = 16  # crops per deraining step
DEMO_SPDNET_CROP = 64  # train on random crops of this size, as the official recipe does (None: whole images)
DEMO_SPDNET_LEARNING_RATE = 1e-3  # peak of the deraining one-cycle schedule
DEMO_WORKERS = 1  # data loading processes (the 2-core CPU computes on the rest)
DEMO_DEVICE = "auto"  # "auto", "cuda", "cpu"


def demo_defaults() -> dict:
    """The DEMO_* settings above and their defaults."""
    return {key: value for key, value in globals().items() if key.startswith("DEMO_")}
