"""gvc_train.lit"""
