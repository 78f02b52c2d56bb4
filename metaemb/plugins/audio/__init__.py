"""Built-in audio plugin: audio folders, VAD, Kaldi fbank, x-vector/ECAPA, the speaker modality."""
