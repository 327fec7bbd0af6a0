"""What every stage stands on: errors, files written atomically, configs, devices, images, the encoder and its
model file, the embedding loop, metrics and calibration. Imports nothing else of siamsearch."""
