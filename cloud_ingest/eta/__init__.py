"""ETA models on the cloud side: training data, training, and the .tflite files vans run."""
