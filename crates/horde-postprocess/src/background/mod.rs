//! `strip_background`: a salient-object network of the U²-Net family (the layouts `rembg`
//! uses: u2net, u2netp, isnet-general-use) whose mask becomes the image's alpha channel.
