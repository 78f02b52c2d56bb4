"""Built-in vision plugin: image folders, face alignment, ResNet/MobileNet, the face modality."""
