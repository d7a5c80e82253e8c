"""gvc_train.data"""
