"""gvc_train.coding"""
