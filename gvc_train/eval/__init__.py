"""gvc_train.eval"""
