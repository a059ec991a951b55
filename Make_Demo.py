"""Build the CPU demo world: data and rain gate, next to the kept "pretrained" detector and "original" SPDNet.

    python Make_Demo.py                          # the demo world, before the demo's commands (configs/demo.py)
    python Make_Demo.py configs/demo_world1.py   # a second world (DEMO_SEED=1) in its own folder
    python Make_Demo.py --DEMO_PRETRAIN=True     # re-make the kept weights in demo_weights/ (~100 min on 2 cores)

Nothing here is downloaded. Real users download PekingU's RT-DETR and the official SPDNet; the demo
keeps their stand-ins in DEMO_WEIGHTS_DIR (``detector/`` and ``spdnet_original.pt``), trained by
``--DEMO_PRETRAIN=True`` on a pretraining world of their own (DEMO_PRETRAIN_SEED: scenes and rain no
demo world shows), with the settings and the measured quality recorded beside them. A demo world
(DEMO_SEED) is synthetic shapes in the COCO layout, clean and rainy; the rain gate is trained on it.
Each stage is skipped when its output records the same settings, so running it again costs almost
nothing; utils/apps/demo.py says how each stage is made. The production scripts know nothing of the
demo: configs/demo.py points them at what this builds (a config file may serve this script and them,
each taking its own keys).
"""

from __future__ import annotations

# ---- the demo world
DEMO_DIR = "./outputs_spdnet_adaptation/demo"  # the world, the gate and every demo result go here
DEMO_SEED = 0  # seeds the demo world's scenes, rain and gate
DEMO_NUM_TRAIN = 2000  # training scenes of a demo world (clean + rainy copy each)
DEMO_NUM_VAL = 200  # validation scenes (demo and pretraining worlds)
DEMO_IMAGE_SIZE = 128  # scene size in pixels (a multiple of 32: the detector's input)
DEMO_MAX_OBJECTS = 3  # each scene holds 1..DEMO_MAX_OBJECTS shapes
DEMO_NUM_CLASSES = 3  # shape classes drawn: circle, square, triangle (up to 6: + diamond, cross, ring)
DEMO_RAIN_PRESETS = ["medium"]  # rain strengths of the rainy copies ("light", "medium", "heavy")
# ---- its rain gate
DEMO_GATE_EPOCHS = 2  # epochs of the rain gate (Training_Rain_Detector.py, small_cnn)
# ---- the kept stand-ins for the pretrained detector and SPDNet (DEMO_PRETRAIN remakes them)
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
# ---- system
DEMO_WORKERS = 1  # data loading processes (the 2-core CPU computes on the rest)
DEMO_CPU_THREADS = 1  # PyTorch's CPU threads while a demo world is measured and its gate trained (one: the same
#   gate, so the same demo figures, on any core count; None: one per core)
DEMO_DEVICE = "auto"  # "auto", "cuda", "cpu"


from utils.runtime.config import command_line, load_config  # noqa: E402  (the constants above come first, as users read them)


def main(argv: list[str] | None = None) -> dict:
    config = load_config(globals(), argv, quiet=True)
    # The library (and torch) loads only now, after the settings are checked: a bad one fails at once.
    from utils.apps.demo import prepare_demo

    return prepare_demo(config)


if __name__ == "__main__":
    command_line(main)
