"""Front-end presets of mmjax.data.audio's features: keyword dicts for
`log_mel(wave, **preset)` (sample_rate included), each with what it does and
does not reproduce of the original model's feature code.
"""

# LAION CLAP (laion_clap `get_mel` and the released Hugging Face
# ClapFeatureExtractor configs, truncation="fusion"): torchaudio's
# MelSpectrogram at 48 kHz, 1024-point Hann frames every 480 samples, 64 HTK
# mels between 50 Hz and 14 kHz without area normalisation, centred frames
# padded by *reflection*, then AmplitudeToDB(top_db=None), i.e.
# 10 * log10(max(S, 1e-10)). The non-fusion path of laion_clap (torchlibrosa
# inside HTSAT) uses Slaney mels with norm="slaney" instead:
# dict(CLAP, htk=False, norm="slaney").
CLAP = dict(sample_rate=48_000, n_fft=1024, hop_length=480, n_mels=64, fmin=50.0,
            fmax=14_000.0, htk=True, norm=None, center=True, pad_mode="reflect",
            power=2.0, top_db=None)

# AST / ImageBind style: 16 kHz, 25 ms (400-sample) frames every 10 ms, 128
# HTK mels, uncentred frames (Kaldi's snip_edges). Both models compute
# `torchaudio.compliance.kaldi.fbank(htk_compat=True, window_type="hanning",
# dither=0.0, use_energy=False, num_mel_bins=128, frame_shift=10)` on the
# mean-removed clip. What this preset does NOT reproduce of that:
#   - Kaldi's per-frame DC removal and 0.97 pre-emphasis (both on by default);
#   - its symmetric Hann ("hanning") window (ours is periodic) and its FFT
#     size rounded up to 512 with the frame zero-padded at the end;
#   - its triangles, linear in mel (ours are linear in Hz between mel-spaced
#     edges, librosa's), from low_freq=20 Hz to Nyquist;
#   - natural log with a floor of float32 eps (ours: dB, floor 1e-10; ln S =
#     dB * ln(10) / 10), and AST's (x + 4.27) / (4.57 * 2) normalisation.
# Kaldi's default povey window and dithering are off in AST/ImageBind and not
# reproduced either. So these features have AST's shape and time/frequency
# grid, not its exact values: a model trained on them must not be fed Kaldi's.
# At n_fft=400 (40 Hz bins) 3 of the lowest bands catch no bin and stay at
# -100 dB (mel_filterbank warns once); dict(AST, n_fft=512, win_length=400),
# Kaldi's FFT size, leaves 1.
AST = dict(sample_rate=16_000, n_fft=400, hop_length=160, n_mels=128, fmin=20.0,
           fmax=8_000.0, htk=True, norm=None, center=False, power=2.0, top_db=None)
IMAGEBIND = dict(AST)
