# The recipe of the demo's own rain gate (utils/apps/demo.py gate_settings), for Training_Rain_Detector.py, read
# after configs/demo.py (whose gate settings are the detector-view gate's):
#   python Training_Rain_Detector.py configs/demo.py configs/demo_rain_gate.py   (DEMO_DIR/rain_detector.pt; its SEED
#     stays the scripts': --SEED=0, the demo's DEMO_SEED, repeats the demo's gate bit for bit)
GATE_IMAGE_SIZE = 128  # the world's scene size (DEMO_IMAGE_SIZE)
GATE_PERCENT_DATASET = 100  # every training scene, half shown clean, half rainy
ARCHITECTURE = "small_cnn"
INPUT_SIZE = 128  # the gate sees the scenes at their own size
