"""Training losses shared by stages: a 3-D patch discriminator, hinge GAN losses, LPIPS."""
