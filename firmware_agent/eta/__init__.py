"""On-device ETA prediction: the .tflite model runner (and, later, features and events)."""
