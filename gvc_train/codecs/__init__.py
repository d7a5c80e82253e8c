"""gvc_train.codecs"""
